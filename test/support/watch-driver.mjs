// Drives Vitest in watch mode through its public API: one run, a change on disk, one rerun.
// Prints one JSON line per run with the state of every test, then exits. With `deps` as the second
// argument the change also adds a package manifest, which changes what the dependencies are; with
// `module` it is a module the tests import (data/value.ts) that changes.
import fs from 'node:fs'
import path from 'node:path'
import { createVitest } from 'vitest/node'

const root = process.argv[2]
const mode = process.argv[3]
const data = path.join(root, 'data')
const writeVersion = (v) => fs.writeFileSync(path.join(data, mode === 'module' ? 'value.ts' : 'value.txt'), mode === 'module' ? `export const value = '${v}'\n` : v)
fs.mkdirSync(data, { recursive: true })
writeVersion('v1')
if (mode !== 'module') fs.writeFileSync(path.join(data, 'gone.txt'), 'present')

const vitest = await createVitest('test', { root, watch: true, reporters: ['default'] })
const states = () => vitest.state.getTestModules().flatMap((m) => [...m.children.allTests()].map((t) => `${t.name}: ${t.result().state}`))
try {
  await vitest.start()
  console.log(`RUN1 ${JSON.stringify(states())}`)
  writeVersion('v2')
  if (mode !== 'module') fs.rmSync(path.join(data, 'gone.txt'))
  if (mode === 'deps') fs.writeFileSync(path.join(data, 'package.json'), '{"name":"watch-data","private":true}\n')
  await vitest.rerunFiles()
  console.log(`RUN2 ${JSON.stringify(states())}`)
} finally {
  await vitest.close()
  fs.rmSync(data, { recursive: true, force: true })
}
