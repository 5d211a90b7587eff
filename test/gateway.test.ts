/**
 * Attacks on the host gateway through real Vitest in real sandboxes (fixtures/gateway-attack):
 * raw frames on a worker's private channel (a reused call id, an answer the host never asked for,
 * a method off the list, a 3 GiB header, results for another test file), and calls the gateway
 * screens (every id form, for existing and missing host files alike; coverage data naming host
 * files, `__proto__` keys and paths with `..`; error stacks naming host files; VITE_ variables),
 * and seeded fuzzers writing random frame streams cut at random byte boundaries (test/fuzz).
 * The host's output, reports, coverage reports, Object.prototype and files are checked afterwards,
 * on local sandboxes (a direct socket per worker) and relayed through watasu() → serve (the agent's
 * link and module cache), whose API key must not reach the sandbox either.
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startServe } from './support/serve.js'
import { REPO, runFixture, testsOf } from './support/vitest-run.js'

const FIXTURE = path.join(REPO, 'fixtures/gateway-attack')
let hostDir: string

function hashes(dir: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const p = path.join(e.parentPath, e.name)
    // Vitest's own writes (its results cache, the coverage reports) are checked elsewhere.
    if (e.isFile() && !p.includes(`${path.sep}coverage${path.sep}`) && !p.includes(`${path.sep}node_modules${path.sep}.vite${path.sep}`)) out[path.relative(dir, p)] = createHash('sha256').update(fs.readFileSync(p)).digest('hex')
  }
  return out
}

function filesUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return []
  return fs.readdirSync(dir, { withFileTypes: true, recursive: true }).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name))
}

/** What the harness makes in the fixture (a run that was cut short may have left it). */
/** Packages above the workspace (its root is this repository's), where the host's resolver also looks. */
const ABOVE = path.join(path.dirname(REPO), 'node_modules')
const ABOVE_PACKAGES = ['vps-above-pkg', 'vps-above-badjson', '_vpsabove', 'q']
/** Files in tools' caches in the fixture's node_modules (Vitest's module caches hold the host's env). */
const CACHED = ['.cache', '.experimental-vitest-cache', '.vite/vitest'].map((c) => path.join(FIXTURE, 'node_modules', c, 'vps-planted.txt'))

function removeMade(): void {
  for (const p of ABOVE_PACKAGES) fs.rmSync(path.join(ABOVE, p), { recursive: true, force: true })
  if (fs.existsSync(ABOVE) && !fs.readdirSync(ABOVE).length) fs.rmdirSync(ABOVE)
  for (const f of CACHED) fs.rmSync(f, { force: true })
  const written = ['build.rs', 'Rakefile', 'src/main.go', 'index.html', 'build.gradle', 'lefthook.yml', 'compose.yaml', 'Taskfile.yaml', 'src/tasks.yml'] // by an attack, if it worked
  for (const f of ['.env', 'coverage', 'public', 'test/notes', 'hostlink', 'lkthere', 'lknowhr', 'loopy', 'test/kq.key', '.env.pp', '.github', '.vitest-attachments', 'test/generated', 'test/node_modules', 'src/generated-mapped.js', ...written]) fs.rmSync(path.join(FIXTURE, f), { recursive: true, force: true })
}

beforeAll(() => {
  removeMade()
  hostDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-gw-'))
  fs.writeFileSync(path.join(hostDir, 'secret.js'), 'attack-secret-outside\nattack-secret-line-2\n')
  // Packages near a made-up importer outside the workspace: the host's resolver would walk them.
  fs.mkdirSync(path.join(hostDir, 'node_modules/hostpkg'), { recursive: true })
  fs.writeFileSync(path.join(hostDir, 'node_modules/hostpkg/package.json'), JSON.stringify({ name: 'hostpkg', exports: { './listed': './listed.js' } }))
  fs.writeFileSync(path.join(hostDir, 'node_modules/hostpkg/listed.js'), 'export const x = "attack-secret-package"\n')
  fs.writeFileSync(path.join(hostDir, 'package.json'), JSON.stringify({ name: 'attack-secret-pkgname', imports: { '#listed': './secret.js' } }))
  // tsconfig.json files the host's transform of a module at a path in this folder would look for.
  fs.mkdirSync(path.join(hostDir, 'tsc/bad'), { recursive: true })
  fs.writeFileSync(path.join(hostDir, 'tsc/bad/tsconfig.json'), '{ "compilerOptions": attack-secret-tsconfig')
  fs.mkdirSync(path.join(hostDir, 'tsc/good'), { recursive: true })
  fs.writeFileSync(path.join(hostDir, 'tsc/good/tsconfig.json'), JSON.stringify({ compilerOptions: { useDefineForClassFields: false, experimentalDecorators: true } }))
  fs.writeFileSync(path.join(FIXTURE, '.env'), 'VITE_DOTENV=attack-secret-vite-dotenv\n')
  fs.writeFileSync(path.join(FIXTURE, 'test/kq.key'), 'attack-secret-key\n')
  // Names Vite escapes in a url, and a short one whose twin's random name a query could hold.
  for (const name of ['my secret.txt', 'sécret.txt', 'mark.txt']) fs.writeFileSync(path.join(hostDir, name), 'attack-secret-named\n')
  fs.writeFileSync(path.join(FIXTURE, '.env.pp'), 'attack-secret-env-pp\n')
  fs.mkdirSync(path.join(ABOVE, 'vps-above-pkg'), { recursive: true })
  fs.writeFileSync(path.join(ABOVE, 'vps-above-pkg/package.json'), JSON.stringify({ name: 'vps-above-pkg', exports: { './a': './a.js' } }))
  fs.writeFileSync(path.join(ABOVE, 'vps-above-pkg/a.js'), 'export const x = "attack-secret-above"\n')
  fs.mkdirSync(path.join(ABOVE, 'vps-above-badjson'), { recursive: true })
  fs.writeFileSync(path.join(ABOVE, 'vps-above-badjson/package.json'), 'attack-secret: not json')
  for (const name of ['_vpsabove', 'q']) {
    fs.mkdirSync(path.join(ABOVE, name), { recursive: true })
    fs.writeFileSync(path.join(ABOVE, name, 'package.json'), JSON.stringify({ name, exports: { './a': './a.js' } }))
  }
  for (const f of CACHED) {
    fs.mkdirSync(path.dirname(f), { recursive: true })
    fs.writeFileSync(f, 'VITE_KEY=attack-secret-in-a-cache\n')
  }
  // Links a project may hold (or a test may have made on a machine without sandboxes): names that
  // look harmless, leading to the config, into .github (dangling) and out of the project.
  fs.mkdirSync(path.join(FIXTURE, 'test/notes'), { recursive: true })
  fs.symlinkSync('../../vitest.config.ts', path.join(FIXTURE, 'test/notes/readme.txt'))
  fs.symlinkSync('../../.github/workflows/release.yml', path.join(FIXTURE, 'test/notes/changelog.txt'))
  fs.symlinkSync(hostDir, path.join(FIXTURE, 'hostlink'))
  // Links out of it to a host file and to nothing: the wording of an answer told them apart.
  fs.symlinkSync(path.join(hostDir, 'secret.js'), path.join(FIXTURE, 'lkthere'))
  fs.symlinkSync(path.join(hostDir, 'nothere.js'), path.join(FIXTURE, 'lknowhr'))
  fs.symlinkSync('loopy', path.join(FIXTURE, 'loopy'))
  generateSourceMapAttacks()
  generateCssAttacks()
  generateCodeAttacks()
})

/**
 * Modules whose source maps name host files (their paths are only known now): Vite fills a map's
 * missing `sourcesContent` from disk, reads a `.map` file it names and prints the start of one
 * that is not JSON, and the coverage provider reports a map's sources.
 */
function generateSourceMapAttacks(): void {
  const dir = path.join(FIXTURE, 'test/generated')
  fs.mkdirSync(dir, { recursive: true })
  fs.writeFileSync(path.join(hostDir, 'app.js.map'), JSON.stringify({ version: 3, sources: ['app.ts'], sourcesContent: ['attack-secret-sourcemap'], names: [], mappings: 'AAAA' }))
  fs.writeFileSync(path.join(hostDir, 'notjson.map'), 'atkmark-not-json\n')
  const secret = path.join(hostDir, 'secret.js')
  const inline = (map: object, mime = 'application/json') => `//# sourceMappingURL=data:${mime};base64,${Buffer.from(JSON.stringify(map)).toString('base64')}\n`
  const mapOf = (from: string, sources = [path.relative(from, secret), '/proc/self/environ']) => ({ version: 3, sources, names: [], mappings: 'AAAA;ACAA' })
  const write = (name: string, text: string) => fs.writeFileSync(path.join(dir, name), text)
  // Every form convert-source-map reads: application/json, text/json, no type; a source with a
  // query (Vite drops it before reading); a .map file outside; one that is not JSON.
  fs.writeFileSync(path.join(FIXTURE, 'src/generated-mapped.js'), `export function f(x) {\n  return x + 1\n}\n${inline(mapOf(path.join(FIXTURE, 'src')), 'text/json')}`)
  write('no-type.js', `export const c = 3\n${inline(mapOf(dir), '')}`)
  write('query-source.js', `export const d = 4\n${inline(mapOf(dir, [`${secret}?/../../../..${dir}/zz`]))}`)
  write('external-map.js', `export const a = 1\n//# sourceMappingURL=${path.relative(dir, path.join(hostDir, 'app.js.map'))}\n`)
  write('not-json-map.js', `export const b = 2\n//# sourceMappingURL=${path.relative(dir, path.join(hostDir, 'notjson.map'))}\n`)
  // Never imported (not in the host's module graph): Vitest reads them, and the map they name, for a stack frame.
  write('frame-existing.js', `export {}\n//# sourceMappingURL=${path.relative(dir, secret)}\n`)
  write('frame-missing.js', `export {}\n//# sourceMappingURL=${path.relative(dir, path.join(hostDir, 'nothere.js'))}\n`)
  // An id nothing resolves is read as written, relative to the host's working folder (the
  // fixture): a climb that names nothing from the importer's folder, and bare names there.
  const fromCwd = (to: string) => path.relative(FIXTURE, to)
  write('cwd-existing.js', `export const load = () => import('${fromCwd(secret)}?raw')\nexport const parse = () => import('${fromCwd(secret)}')\n`)
  write('cwd-missing.js', `export const load = () => import('${fromCwd(path.join(hostDir, 'nothere.js'))}?raw')\nexport const parse = () => import('${fromCwd(path.join(hostDir, 'nothere.js'))}')\n`)
  // A glob over a folder holding a file that is not given (a key): Vite's plugin lists the host folder.
  fs.mkdirSync(path.join(dir, 'listed'))
  fs.writeFileSync(path.join(dir, 'listed/one.json'), '{}\n')
  fs.writeFileSync(path.join(dir, 'listed/server.key'), 'attack-secret-key\n')
  fs.writeFileSync(path.join(dir, 'listed/.env.production'), 'TOKEN=attack-secret-dotglob\n')
  // A folder whose name is a glob pattern to another globber: Vite escapes it.
  fs.mkdirSync(path.join(dir, '{a,b}'))
  fs.writeFileSync(path.join(dir, '{a,b}/deploy.key'), 'attack-secret-brace\n')
  fs.writeFileSync(path.join(dir, '{a,b}/one.json'), '{}\n')
  write('{a,b}/brace.test.ts', `import { expect, it } from 'vitest'\n\nit('lists only given files in a folder named like a pattern', () => {\n  expect(Object.keys(import.meta.glob(['./*', './.*'], { query: '?raw' }))).toEqual(['./one.json'])\n})\n`)
  write('listing.test.ts', `import { expect, it } from 'vitest'\n\nit('lists only given files through import.meta.glob', () => {\n  expect(Object.keys(import.meta.glob('./listed/*', { eager: true, query: '?raw', import: 'default' }))).toEqual(['./listed/one.json'])\n  expect(Object.keys(import.meta.glob('./listed/.env*'))).toEqual([])\n})\n`)
  // The host's import analysis resolves what a given module imports.
  write('import-existing.js', `import x from '${secret}'\nexport { x }\n`)
  write('import-missing.js', `import x from '${path.join(hostDir, 'nothere.js')}'\nexport { x }\n`)
  // Vite's asset plugin (client environments) reads what `new URL(…?inline, import.meta.url)` names.
  const up = (to: string) => path.relative(dir, to)
  write('asset-existing.js', `export const u = new URL('${up(secret)}?inline', import.meta.url).href\nexport const e = new URL('../public/proc/self/environ?inline', import.meta.url).href\n`)
  write('asset-missing.js', `export const u = new URL('${up(path.join(hostDir, 'nothere.js'))}?inline', import.meta.url).href\nexport const e = new URL('../public/proc/self/nothere?inline', import.meta.url).href\n`)
  fs.writeFileSync(path.join(hostDir, 'secret.svg'), '<svg><!-- attack-secret-svg --></svg>\n')
  write('asset-nm-existing.js', `export const u = new URL('../node_modules/evil/secret.svg?inline', import.meta.url).href\n`)
  write('asset-nm-missing.js', `export const u = new URL('../node_modules/evil/nothere.svg?inline', import.meta.url).href\n`)
  write('worker-existing.js', `export const w = () => new Worker(new URL('${up(path.join(hostDir, 'secret.svg'))}', import.meta.url))\n`)
  write('worker-missing.js', `export const w = () => new Worker(new URL('${up(path.join(hostDir, 'nothere.svg'))}', import.meta.url))\n`)
  // Vite reads `/x` from the public folder too: a secret there is not given.
  fs.mkdirSync(path.join(FIXTURE, 'public'), { recursive: true })
  fs.writeFileSync(path.join(FIXTURE, 'public/.env.local'), 'TOKEN=attack-secret-public\n')
  fs.mkdirSync(path.join(FIXTURE, 'test/node_modules'), { recursive: true })
  fs.symlinkSync(hostDir, path.join(FIXTURE, 'test/node_modules/evil'))
  fs.symlinkSync(path.join(hostDir, 'node_modules/hostpkg'), path.join(FIXTURE, 'test/node_modules/evilpkg'))
  // A workspace package's link (npm, yarn and pnpm workspaces make them) leads to the package's
  // files in the project, given or not: only the given ones may be read through it.
  fs.mkdirSync(path.join(dir, 'pkg'))
  fs.writeFileSync(path.join(dir, 'pkg/.env'), 'TOKEN=attack-secret-pkg-env\n')
  fs.writeFileSync(path.join(dir, 'pkg/index.js'), 'export const ok = 1\n')
  fs.symlinkSync('../generated/pkg', path.join(FIXTURE, 'test/node_modules/pkg'))
  write(
    'pkg-link.test.ts',
    `import { expect, it } from 'vitest'

const linked = '${path.join(FIXTURE, 'test/node_modules/pkg')}'
it("reads a workspace package's given files through its link, and nothing else", async () => {
  expect((await import('../node_modules/pkg/index.js')).ok).toBe(1)
  await expect(import(/* @vite-ignore */ \`\${linked}/.env?raw\`)).rejects.toThrow()
  const rpc = (globalThis as any).__vitest_worker__.rpc
  const answer = await rpc.fetch(\`\${linked}/.env?raw\`, import.meta.filename, 'ssr', {}).catch((e: Error) => e.message)
  expect(JSON.stringify(answer)).not.toContain('TOKEN=')
  await rpc.onAsyncLeaks([{ type: 'Timeout', stack: \`Error: x\\n    at f (\${linked}/.env:1:1)\`, filename: \`\${linked}/.env\`, projectName: '' }])
})
`,
  )
  write(
    'source-maps.test.ts',
    `import { expect, it } from 'vitest'
import { fileTaskId } from '../raw'
import { f } from '../../src/generated-mapped.js'
import { a } from './external-map.js'
import { b } from './not-json-map.js'
import { c } from './no-type.js'
import { d } from './query-source.js'

const rpc = (globalThis as any).__vitest_worker__.rpc
const dir = import.meta.dirname
const decoded = (s: string) => s.replace(/base64,([A-Za-z0-9+/=]+)/g, (_, b64) => Buffer.from(b64, 'base64').toString('utf8'))
// Markers made at run time: this file's own source (in its map) must not match them.
const SECRET = ['attack', 'sec'].join('-')
const ENV = new RegExp(['PA', 'TH=|HO', 'ME='].join(''))
const text = (v: unknown) => decoded(JSON.stringify(v, (_, x) => (x instanceof Error ? x.message : x)) ?? 'undefined')
const settled = (p: Promise<unknown>) => p.then((r) => 'ok ' + text(r), (e: Error) => 'error ' + e.message)

it('gets no host file through a source map, in any form', async () => {
  expect(f(1) + a + b + c + d).toBe(12)
  for (const id of [import.meta.filename, '${path.join(FIXTURE, 'src/generated-mapped.js')}', ...['external-map', 'no-type', 'query-source', 'not-json-map'].map((n) => \`\${dir}/\${n}.js\`)]) {
    const got = text(await rpc.fetch(id, undefined, 'ssr', {}))
    expect(got, id).not.toContain(SECRET)
    expect(got, id).not.toMatch(ENV)
  }
})

it('cannot tell an existing host file from a missing one through a stack frame, an import or a link', async () => {
  const own = fileTaskId('test/generated/source-maps.test.ts')
  const frame = (name: string) => settled(rpc.onTaskUpdate([[own, { state: 'run', errors: [{ name: 'Error', message: 'm', stack: \`Error: m\\n    at f (\${dir}/\${name}.js:2:1)\` }] }, undefined]], []))
  expect(await frame('frame-existing')).toBe(await frame('frame-missing'))
  for (const env of ['ssr', 'client']) {
    const imported = async (name: string) => (await settled(rpc.fetch(\`\${dir}/\${name}.js\`, undefined, env, {}))).replace(/secret|nothere/g, 'X').replace(/existing|missing/g, 'Y')
    expect(await imported('import-existing'), env).toBe(await imported('import-missing'))
  }
  const asset = async (name: string) => (await settled(rpc.fetch(\`\${dir}/\${name}.js\`, undefined, 'client', {}))).replace(/secret|nothere|environ/g, 'X').replace(/existing|missing/g, 'Y')
  expect(await asset('asset-existing')).toBe(await asset('asset-missing'))
  expect(await asset('asset-existing')).toMatch(/names a file the sandbox is not given/)
  expect(await asset('worker-existing')).toBe(await asset('worker-missing'))
  // Through a link under node_modules that leads out: refused whatever is there.
  expect(await asset('asset-nm-existing')).toBe(await asset('asset-nm-missing'))
  expect(await asset('asset-nm-existing')).toMatch(/names a file the sandbox is not given/)
  expect(await asset('worker-existing')).toMatch(/names a file the sandbox is not given/)
  for (const query of ['?raw', '?url&inline']) {
    const inPublic = async (name: string) => (await settled(rpc.fetch(\`/\${name}\${query}\`, import.meta.filename, 'ssr', {}))).split(name).join('X')
    const got = await inPublic('.env.local')
    expect(got, query).not.toContain(SECRET)
    expect(got, query).toBe(await inPublic('.env.qqqqq'))
  }
  const cwd = async (name: string) => {
    const m = await import(\`./\${name}.js\`)
    return [await settled(m.load()), await settled(m.parse())].join('\\n').replace(/secret|nothere/g, 'X')
  }
  expect(await cwd('cwd-existing')).not.toContain(SECRET)
  expect(await cwd('cwd-existing')).toBe(await cwd('cwd-missing'))
  for (const [existing, missing] of [['.env?raw', '.qqq?raw'], ['.env', '.qqq'], ['test/notes/readme.txt?raw', 'test/notes/qqqqqq.txt?raw']]) {
    const bare = async (id: string) => (await settled(rpc.fetch(id, import.meta.filename, 'ssr', {}))).split(id.replace(/[?].*/, '')).join('X')
    expect(await bare(existing), existing).not.toContain(SECRET)
    expect(await bare(existing), existing).toBe(await bare(missing))
  }
  for (const form of ['evil/secret.js', 'evil/secret', 'evil/secret.js?raw']) {
    const linked = async (name: string) => (await settled(rpc.resolve(form.replace('secret', name), import.meta.filename, 'ssr'))).split(name).join('X')
    expect(await linked('secret'), form).toBe(await linked('nothere'))
  }
})
${inline(mapOf(dir))}`,
  )
}

/**
 * Modules whose text Vite's plugins would run as code on the host (glob and worker options), an id
 * a line separator keeps Vite from splitting, and a line that looks like Vite's env statement.
 * Each writes a mark into the host folder if it ran there, which the harness checks.
 */
function generateCodeAttacks(): void {
  const dir = path.join(FIXTURE, 'test/generated')
  const write = (name: string, text: string) => fs.writeFileSync(path.join(dir, name), text)
  const mark = (name: string) => `Function\`process.getBuiltinModule('fs').writeFileSync(${JSON.stringify(path.join(hostDir, name))}, 'ran on the host')\`\`\``
  write('one.json', '{}\n')
  write('code-glob.js', `export const m = import.meta.glob('./one.json', { query: { leak: ${mark('glob-options')} } })\n`)
  write('code-worker.js', `export const w = () => new Worker(new URL('./one.json', import.meta.url), { type: ${mark('worker-options')} })\n`)
  // A regex literal to this package's tokenizer, a division (and so code) to the one inside Vite.
  const payload = (name: string) => mark(name).replace(/\//g, '\\x2f')
  write('code-desync.js', `export function g() { return 0 in /import.meta.glob('x', { a: ${payload('glob-desync')} })/ }\n`)
  write('code-desync-worker.js', `export function w() { return 0 in /new Worker(new URL('w.js', import.meta.url), { type: ${payload('worker-desync')} })/ }\n`)
  // Where the gateway's tokenizer and Vite's end a call or a string differently (`0 in /'/`).
  const secretFromHere = path.relative(dir, path.join(hostDir, 'secret.js'))
  write('code-desync-args.js', `export const m = () => import.meta.glob('./one.json', {}, 0 in /'/)("./one.json" //'\n, {a: ${mark('glob-args')}})\n`)
  write('code-desync-comma.js', `export const w = () => new Worker(new URL('./one.json', import.meta.url) in /,'/)(' + '//' + ${mark('worker-comma')}\n)\n`)
  write('code-desync-comment.js', `export const s = 0 in /'/ + 'new/**/Worker(new/**/URL("./one.json", import.meta.url), { type: ${mark('worker-comment')} })' //'\nexport const t = 0 in /\`/ + \`new/**/URL("${secretFromHere}?inline", import.meta.url)\` //\`\n`)
  write('code-env.js', 'const x = 1\nexport { x as "\u2028import.meta.env = {};\u2028" }\nexport const env = import.meta.env\n')
  write(
    'code.test.ts',
    `import { expect, it } from 'vitest'

const rpc = (globalThis as any).__vitest_worker__.rpc
const call = (process as any)[Symbol.for('vitest-pool-sandbox.host-call')]
const settled = (p: Promise<unknown>) => p.then((v) => JSON.stringify(v) ?? 'undefined', (e: Error) => String(e?.message ?? e))

it("runs no glob or worker options of a module as code on the host", async () => {
  await expect(import('./code-glob.js')).rejects.toThrow(/has options that are not plain values/)
  expect(await settled(rpc.fetch(import.meta.dirname + '/code-worker.js', undefined, 'client', {}))).toMatch(/are not plain values/)
})

it('refuses what a plugin could take for a call, whatever its tokenizer reads there', async () => {
  // Refused, or served with the expression escaped inside its literal: never evaluated on the host
  // (the harness checks the host folder for the mark the payload would leave).
  expect(await import('./code-desync.js').then((m) => String(m.g()), (e: Error) => e.message)).toMatch(/^false$|is not a call the sandbox pool can read/)
  // Served (its regex is only a regex), or refused: the host folder shows whether anything ran.
  expect(await settled(rpc.fetch(import.meta.dirname + '/code-desync-worker.js', undefined, 'client', {}))).toMatch(/__vite_ssr_exportName__|are not plain values|is not a call/)
})

it('evaluates nothing of them on the host, and reads nothing through them, however a tokenizer reads them', async () => {
  for (const name of ['code-desync-args.js', 'code-desync-comma.js', 'code-desync-comment.js']) {
    for (const environment of ['ssr', 'client']) {
      expect(await settled(rpc.fetch(import.meta.dirname + '/' + name, undefined, environment, {})), name).not.toContain('attack-secret')
    }
  }
})

it("gives a module only the env names it may see, however its lines read", async () => {
  expect(await settled(rpc.fetch(import.meta.dirname + '/code-env.js', undefined, 'ssr', {}))).not.toContain('attack-secret')
  expect(JSON.stringify((await import('./code-env.js')).env)).not.toContain('attack-secret')
})

it('makes no folder whose name an id or a file URL cannot carry, and reads no id with a line separator', async () => {
  expect(await settled(call('snapshot:write', import.meta.dirname + '/q?\u2028/a.txt', 'x'))).toMatch(/refused to create [^]*(a character module ids and file URLs cannot carry|update mode none)/)
  // A file URL reads %2e%2e as .. (the coverage provider reads files so).
  expect(await settled(call('snapshot:write', import.meta.dirname + '/%2e%2e/a.txt', 'x'))).toMatch(/refused to create [^]*(a character module ids and file URLs cannot carry|update mode none)/)
  const climb = import.meta.dirname + '/q?\u2028/../../../.env?raw'
  expect(await settled(rpc.fetch(climb, import.meta.filename, 'ssr', {}))).not.toContain('attack-secret')
  await expect(import(/* @vite-ignore */ climb)).rejects.toThrow()
})
`,
  )
}

/**
 * CSS that names host files (the fixture turns CSS processing on): Vite's CSS pipeline reads what
 * `@import`, `url()`, `image-set()` and `composes … from` name with resolvers of its own, and inlines
 * an SVG. Each is made twice, for an existing host file and a missing one: the answers must match.
 */
function generateCssAttacks(): void {
  const dir = path.join(FIXTURE, 'test/generated/css')
  fs.mkdirSync(dir, { recursive: true })
  fs.writeFileSync(path.join(hostDir, 'secret.css'), '.leak { color: red }\n/* attack-secret-css */\n')
  const write = (name: string, text: string) => fs.writeFileSync(path.join(dir, name), text)
  const up = (name: string) => path.relative(dir, path.join(hostDir, name))
  for (const [kind, name] of [['existing', 'secret'], ['missing', 'nothere']]) {
    write(`import-abs-${kind}.css`, `@import '${path.join(hostDir, name)}.css';\n.a { color: blue }\n`)
    write(`import-rel-${kind}.css`, `@import '${up(name)}.css';\n`)
    write(`url-rel-${kind}.css`, `.a { background: url(${up(name)}.svg) }\n`)
    write(`url-abs-${kind}.css`, `.a { background: url("${path.join(hostDir, name)}.svg") }\n`)
    write(`image-set-${kind}.css`, `.a { background: image-set("${up(name)}.svg" 1x) }\n`)
    write(`composes-${kind}.module.css`, `.a { composes: leak from '${up(name)}.css'; }\n`)
  }
  // What an honest test compiles: CSS modules, @import and url() of given files.
  write('base.css', '.base { margin: 0 }\n')
  write('pic.svg', '<svg xmlns="http://www.w3.org/2000/svg"><!-- given --></svg>\n')
  write('pic.png', 'not really a png\n')
  write('ok.module.css', `@import './base.css';\n.btn { color: blue; background: url(./pic.svg) }\n.wide { composes: btn; width: 1px; background: url(./pic.png) }\n`)
  write(
    'css.test.ts',
    `import { expect, it } from 'vitest'
import styles from './ok.module.css'

const rpc = (globalThis as any).__vitest_worker__.rpc
const dir = import.meta.dirname
const SECRET = ['attack', 'sec'].join('-')
const settled = (p: Promise<any>) => p.then((r) => 'ok ' + JSON.stringify(r?.code ?? r), (e: Error) => 'error ' + e.message)

it('compiles CSS of given files as forks does', async () => {
  expect(styles.btn).toMatch(/btn/)
  expect(styles.wide).toContain(styles.btn)
  const inline = await settled(rpc.fetch(\`\${dir}/ok.module.css?inline\`, undefined, 'ssr', {}))
  expect(inline).toMatch(/^ok .*margin: 0.*data:image\\/svg[+]xml.*\\/test\\/generated\\/css\\/pic\.png/s)
})

it('cannot read or tell apart host files through @import, url(), image-set() or composes', async () => {
  for (const attack of ['import-abs', 'import-rel', 'url-rel', 'url-abs', 'image-set', 'composes']) {
    const suffix = attack === 'composes' ? '.module.css' : '.css'
    const got = async (kind: string) => (await settled(rpc.fetch(\`\${dir}/\${attack}-\${kind}\${suffix}?inline\`, undefined, 'ssr', {}))).split('-' + kind).join('-Y')
    const existing = await got('existing')
    expect(existing, attack).not.toContain(SECRET)
    expect(existing, attack).toMatch(/names a file the sandbox is not given, or one that is missing/)
    expect(existing, attack).toBe(await got('missing'))
  }
})
`,
  )
}

afterAll(() => {
  removeMade()
  fs.rmSync(hostDir, { recursive: true, force: true })
})

const VIOLATIONS: Record<string, RegExp> = {
  'dup-id': /a second call with id .* while the first is in flight/,
  answer: /an answer, but the host asked the worker nothing/,
  method: /a call of "__defineGetter__", which is not on the host gateway's list/,
  huge: /message of 3221225472 bytes is over the limit/,
  forge: /onTaskUpdate: task "-?\d+_0" is not a task of this worker's file/,
  'coverage-env': /onAfterSuiteRun: environment "__proto__" is neither a Vite environment of the host nor the test environment/,
  cancel: /onCancel: the run is cancelled only for --bail \(set to off\)/,
  summary: /snapshotSaved: a summary of a file that is not this worker's/,
  nested: /onCollected: task "-?\d+" is not a task of this worker's file/,
  kept: /over 256 MiB of results, logs, errors and coverage/,
  pending: /onUnhandledError: a skip signal for task "-?\d+_0", which is not a task of this worker's file/,
  finished: /"testfileFinished" before its file reported a result/,
  amp: /over 256 MiB of results, logs, errors and coverage/,
  tasks: /over 256 MiB of results, logs, errors and coverage/,
  mixed: /a message with a field "t" that its kind does not have/,
  sparse: /an error or result of over 1000000 values \(an array or buffer of 268435456\)/,
  typed: /an error or result of over 1000000 values \(an array or buffer of 60000000\)/,
  'attachment-tree': /onCollected: an attachment path "\/\/.*" that is not a copy the host made in its attachments folder/,
  'attachment-list': /onCollected: an attachment path "(\.\.\/)+.*" that is not a copy the host made in its attachments folder/,
}

const CASES = [
  { mode: 'none', coverage: 'istanbul', relayed: false },
  { mode: 'new', coverage: 'v8', relayed: false },
  { mode: 'all', coverage: 'istanbul', relayed: false },
  // The relayed path: watasu() against a real `vitest-sandbox serve` whose API key is a secret too.
  { mode: 'new', coverage: 'v8', relayed: true },
] as const

describe('the host gateway, attacked from sandboxed test code', () => {
  for (const { mode, coverage, relayed } of CASES) {
    it(`ends every worker that breaks its protocol and screens the rest (update mode '${mode}', ${coverage} coverage${relayed ? ', relayed through watasu()' : ''})`, async () => {
      const before = hashes(FIXTURE)
      const hostBefore = hashes(hostDir)
      const secret = path.join(hostDir, 'secret.js')
      fs.rmSync(path.join(FIXTURE, 'coverage'), { recursive: true, force: true })
      const serve = relayed ? await startServe({ token: `attack-secret-api-key-${Date.now()}` }) : undefined
      const run = await runFixture('gateway-attack', {
        args: [`--update=${mode}`, '--coverage.enabled', '--coverage.reportOnFailure', `--coverage.provider=${coverage}`, '--coverage.reporter=json', '--coverage.reporter=html', '--reporter=./proto-reporter.ts'],
        env: { VPS_HOST_SECRET: secret, VPS_HOST_DIR: hostDir, VITE_ATTACK: 'attack-secret-vite-env', ...(serve ? { VPS_PROVIDER: 'watasu', WATASU_API_URL: serve.apiUrl, WATASU_API_KEY: serve.token } : {}) },
      }).finally(() => serve?.close())
      if (relayed) expect(run.output).toMatch(/sandbox: 1 sandbox \(watasu\)/)
      const tests = testsOf(run.json ?? { testResults: [] })
      for (const [name, why] of Object.entries(VIOLATIONS)) {
        const file = tests[`fixtures/gateway-attack/test/violation/${name}.test.ts (file)`]
        const failures = Object.entries(tests).filter(([k]) => k.startsWith(`fixtures/gateway-attack/test/violation/${name}.test.ts`)).flatMap(([, t]) => t.failures)
        expect(file?.status, `${name}\n${run.output}`).toBe('failed')
        expect(failures.join('\n'), name).toMatch(/broke the host gateway's protocol and was ended/)
        expect(failures.join('\n'), name).toMatch(why)
      }
      // The fuzzers (seeded, printed): each file passes or is ended for a violation, nothing else.
      const fuzzed = Object.entries(tests).filter(([k]) => k.includes('/fuzz/'))
      expect(fuzzed.filter(([k]) => k.endsWith('(file)')).length, run.output).toBe(3)
      for (const [name, t] of fuzzed) if (t.status === 'failed') expect(t.failures.join('\n'), name).toMatch(/vitest-pool-sandbox: the test worker broke the host gateway's protocol and was ended/)
      expect(run.output).toMatch(/gateway fuzz fuzz-1: seed \d+/)
      // fuzz-1 sends 160 MiB in frames under the limit and a real 400 MiB one over it; kept, 480 MiB
      // of leak records that Vitest would keep.
      expect(Number(/^HOST-PEAK-RSS (\d+) MiB$/m.exec(run.output)?.[1]), run.output).toBeLessThan(1536)
      // A worker that leaves its answers unread is not read meanwhile (its direct socket; relayed, the agent holds them in the sandbox).
      if (!relayed) expect(tests['fixtures/gateway-attack/test/bounded/unread.test.ts (file)']?.status, run.output).toBe('passed')
      const others = Object.entries(tests).filter(([k]) => !k.includes('/violation/') && !k.includes('/fuzz/') && !k.includes('/refused/') && !k.includes('/bounded/'))
      expect(others.filter(([, t]) => t.status !== 'passed'), run.output).toEqual([])
      expect(others.length, run.output).toBe(64)
      // A file that named itself by a path another reader takes for the victim: reported as itself.
      expect(tests['fixtures/gateway-attack/test/forge-path.test.ts (file)']?.status, run.output).toBe('passed')
      expect(run.output).not.toContain('attack-secret')
      expect(run.output).not.toContain('atkmark')
      expect(run.output).not.toContain('attack-sec')
      // A task tree that points a test at another file's file object: reported under its own file.
      expect(run.output).not.toMatch(/FAIL +test\/victim\.test\.ts/)
      // A glob that lists a host folder fails the file's load, naming only the pattern.
      for (const [name, module] of [['glob', 'glob.test.ts'], ['glob-escaped', 'glob-escaped.test.ts'], ['glob-regex', 'glob-regex.js']]) expect(tests[`fixtures/gateway-attack/test/refused/${name}.test.ts (file)`]?.failures.join('\n'), run.output).toMatch(new RegExp(`import\\.meta\\.glob pattern ".*" in fixtures/gateway-attack/test/refused/${module.replace(/\./g, '\\.')} reaches outside the workspace`))
      expect(run.output).toMatch(/^HOST-PROTO clean$/m)
      // Coverage: reports of given files only, written only under the coverage folder.
      const reports = filesUnder(path.join(FIXTURE, 'coverage'))
      expect(reports.length, run.output).toBeGreaterThan(0)
      for (const f of reports) expect(fs.readFileSync(f, 'utf8'), f).not.toContain('attack-secret')
      const json = JSON.parse(fs.readFileSync(path.join(FIXTURE, 'coverage/coverage-final.json'), 'utf8'))
      expect(Object.keys(json).sort()).toEqual([path.join(FIXTURE, 'src/generated-mapped.js'), path.join(FIXTURE, 'src/sum.ts')])
      expect(fs.existsSync('/tmp/vps-escape.ts')).toBe(false)
      expect(fs.existsSync(path.join(FIXTURE, '.github'))).toBe(false)
      expect(filesUnder(path.join(FIXTURE, '.vitest-attachments')).filter((f) => fs.readFileSync(f, 'utf8').includes('attack-secret'))).toEqual([])
      // No host file changed: the fixture (but Vitest's cache and coverage folders) and the host folder.
      expect(hashes(FIXTURE)).toEqual(before)
      expect(hashes(hostDir)).toEqual(hostBefore)
    }, 240_000) // the attack suite: about 50 files, a minute and more relayed on a busy machine
  }
})
