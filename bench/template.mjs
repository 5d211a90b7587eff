// Templates with a dependency tree of 50k+ files (installed from the registry into .bench/deps-50k):
// - whole `vitest run` wall time of a 30-file suite: forks, and the sandbox pool cold (empty engine
//   state) and warm, for the default local path (host node_modules layered, nothing copied) and for
//   the copy path (node_modules uploaded into the template, which is what local() did before);
// - template build time by path (`vitest-sandbox template build`, empty state each time):
//   host layers + one setup command, copy, and the package manager's install inside the sandbox.
// Interleaved rounds, medians. Prints Markdown with the machine and date; paste it into the README.
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const project = path.join(repo, '.bench', 'deps-50k')
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const FILES = 30

const DEPENDENCIES = {
  vitest: '4.1.12',
  '@mui/icons-material': '7.3.5',
  '@mui/material': '7.3.5',
  '@emotion/react': '11.14.0',
  '@emotion/styled': '11.14.1',
  react: '19.2.0',
  'react-dom': '19.2.0',
  'date-fns': '4.1.0',
  lodash: '4.17.21',
}

function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...opts, env: { ...process.env, NO_COLOR: '1', ...opts.env } })
  if (r.status !== 0) throw new Error(`\`${cmd} ${args.join(' ')}\` failed (${r.status ?? r.signal}):\n${r.stdout}\n${r.stderr}`)
  return r.stdout
}

function prepare() {
  fs.mkdirSync(path.join(project, 'test'), { recursive: true })
  const manifest = JSON.stringify({ name: 'deps-50k', private: true, type: 'module', devDependencies: DEPENDENCIES }, null, 2)
  if (!fs.existsSync(path.join(project, 'package.json')) || fs.readFileSync(path.join(project, 'package.json'), 'utf8') !== manifest) {
    fs.writeFileSync(path.join(project, 'package.json'), manifest)
    fs.rmSync(path.join(project, 'node_modules'), { recursive: true, force: true })
    fs.rmSync(path.join(project, 'package-lock.json'), { force: true })
    sh('npm', ['install', '--no-audit', '--no-fund', '--omit-lockfile-registry-resolved=false'], { cwd: project })
  }
  fs.writeFileSync(
    path.join(project, 'vitest.config.mjs'),
    `import { defineConfig } from 'vitest/config'
import { local, sandbox } from ${JSON.stringify(path.join(repo, 'dist/index.js'))}
const setup = process.env.VPS_BENCH_SETUP ? [process.env.VPS_BENCH_SETUP] : []
export default defineConfig({
  test: {
    pool: process.env.VPS_POOL === 'forks' ? 'forks' : sandbox({
      provider: local({ stateDir: process.env.VPS_STATE_DIR }),
      template: { dependencies: process.env.VPS_BENCH_DEPS ?? 'auto', setup, installEnv: ['NODE_EXTRA_CA_CERTS'] },
    }),
  },
})
`,
  )
  for (let i = 0; i < FILES; i++) {
    fs.writeFileSync(
      path.join(project, 'test', `t${i}.test.js`),
      `import { expect, it } from 'vitest'
import { addDays, formatISO } from 'date-fns'
import _ from 'lodash'
import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)
it('uses its dependencies', () => {
  expect(formatISO(addDays(new Date(Date.UTC(2026, 0, 1)), ${i}), { representation: 'date' })).toMatch(/^2026-0/)
  expect(_.chunk([1, 2, 3, 4], 2)).toEqual([[1, 2], [3, 4]])
  expect(typeof require('@mui/icons-material/Alarm${i % 2 ? 'On' : 'Off'}').default).toBe('object')
})
`,
    )
  }
  const count = Number(sh('sh', ['-c', `find ${JSON.stringify(path.join(project, 'node_modules'))} -type f | wc -l`]).trim())
  return count
}

function state() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-bench-tpl-'))
  fs.chmodSync(dir, 0o755)
  return dir
}

function timed(fn) {
  const t = performance.now()
  fn()
  return performance.now() - t
}

const vitest = path.join(project, 'node_modules/vitest/vitest.mjs')
function run(env) {
  return timed(() => {
    const out = sh(process.execPath, [vitest, 'run'], { cwd: project, env })
    if (!new RegExp(`Tests\\s+${FILES} passed`).test(out)) throw new Error(`expected ${FILES} passed tests:\n${out}`)
  })
}

function build(deps, setup) {
  const dir = state()
  try {
    return timed(() => sh(process.execPath, [path.join(repo, 'dist/cli/index.js'), 'template', 'build'], { cwd: project, env: { VPS_STATE_DIR: dir, VPS_BENCH_DEPS: deps, VPS_BENCH_SETUP: setup } }))
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

const files = prepare()
const warm = { host: state(), copy: state() }
const times = { forks: [], hostCold: [], hostWarm: [], copyCold: [], copyWarm: [], buildHost: [], buildCopy: [], buildInstall: [] }
try {
  run({ VPS_STATE_DIR: warm.copy, VPS_BENCH_DEPS: 'copy' }) // the warm copy template, built once
  for (let r = 0; r < ROUNDS; r++) {
    times.forks.push(run({ VPS_POOL: 'forks' }))
    for (const deps of ['host', 'copy']) {
      const cold = state()
      times[`${deps}Cold`].push(run({ VPS_STATE_DIR: cold, VPS_BENCH_DEPS: deps }))
      fs.rmSync(cold, { recursive: true, force: true })
      times[`${deps}Warm`].push(run({ VPS_STATE_DIR: warm[deps], VPS_BENCH_DEPS: deps }))
    }
    times.buildHost.push(build('host', 'true'))
    times.buildCopy.push(build('copy', ''))
    times.buildInstall.push(build('install', ''))
  }
} finally {
  for (const dir of Object.values(warm)) fs.rmSync(dir, { recursive: true, force: true })
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const s = (xs) => (median(xs) / 1000).toFixed(2)
const f = median(times.forks)
console.log(`Templates, ${new Date().toISOString().slice(0, 10)}, ${os.cpus().length} × ${os.cpus()[0]?.model}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}; ${files} dependency files, ${FILES} test files, median of ${ROUNDS} interleaved rounds.`)
console.log('')
console.log('| run | wall time (s) | vs forks |')
console.log('|---|---|---|')
for (const [name, xs] of [
  ['forks', times.forks],
  ['sandbox, host layers (default), cold: empty engine state', times.hostCold],
  ['sandbox, host layers (default), warm', times.hostWarm],
  ['sandbox, copy path, cold (template built in the run)', times.copyCold],
  ['sandbox, copy path, warm', times.copyWarm],
]) console.log(`| ${name} | ${s(xs)} | ${(median(xs) / f).toFixed(2)}× |`)
console.log('')
console.log('| template build (`vitest-sandbox template build`, empty state) | time (s) |')
console.log('|---|---|')
console.log(`| host layers + one setup command (\`true\`) | ${s(times.buildHost)} |`)
console.log(`| copy of the host's node_modules | ${s(times.buildCopy)} |`)
console.log(`| \`npm ci\` inside the template (from the registry) | ${s(times.buildInstall)} |`)
