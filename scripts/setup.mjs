// Brings a fresh clone to a runnable state, with nothing but Node and npm: installs the npm
// dependencies when they are missing or stale, builds, and runs `vitest-sandbox doctor --fix`
// (which installs bubblewrap where it can and prints the exact fix where it cannot).
// Used by `npm test` and `npm run example`; safe to run again, it skips what is done.
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'

function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' })
  if (r.status !== 0) {
    console.error(`setup: \`${[cmd, ...args].join(' ')}\` failed (exit ${r.status ?? r.signal})`)
    process.exit(r.status || 1)
  }
}

// The project, the Vitest 5 fixture (its own lockfile: Vitest 5 and Node 22 from npm), and the
// Vitest 4.0 one (refused).
for (const dir of ['.', 'fixtures/vitest5', 'fixtures/vitest40']) {
  const marker = path.join(root, dir, 'node_modules/.package-lock.json')
  const stale = !fs.existsSync(marker) || fs.statSync(path.join(root, dir, 'package-lock.json')).mtimeMs > fs.statSync(marker).mtimeMs
  if (stale) run(npm, ['ci', '--no-audit', '--no-fund', '--prefix', dir])
}
run(npm, ['run', '--silent', 'build'])
run(process.execPath, [path.join(root, 'dist/cli/index.js'), 'doctor', '--fix'])
