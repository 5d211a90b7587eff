/**
 * The host gateway under random input (seeded, bounded): frames mutated from the messages a real
 * Vitest worker sends, and random answers from the host. Whatever arrives, the gateway either
 * ends the worker (ProtocolViolation, never another error) or lets through only what its list
 * allows: its own call ids to the host, listed methods with listed argument shapes, module ids
 * that name no host file outside the workspace; and the worker gets back only its own ids.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { RUN_LIMITS, RunBudget } from '../src/pool/gateway/budget.js'
import { Gateway, ProtocolViolation, type GatewayContext } from '../src/pool/gateway/gateway.js'
import { badArguments, methodSpec, METHODS, REFUSED } from '../src/pool/gateway/methods.js'
import { fileRules } from '../src/pool/gateway/file-rules.js'
import { collectWorkspace } from '../src/workspace/collect.js'
import { seeded } from './support/seeded.js'
import { parseErrorStacktrace } from '@vitest/utils/source-map'
import { screenStacks } from '../src/pool/gateway/errors.js'
import { ABSENT } from '../src/pool/gateway/module-ids.js'
import { writeCoverageFile } from '../src/pool/gateway/coverage.js'

let dir: string
let root: string
let secret: string
let ctx: GatewayContext

beforeAll(async () => {
  dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'vps-fuzz-')))
  root = path.join(dir, 'ws')
  secret = path.join(dir, 'host-secret.ts')
  fs.mkdirSync(path.join(root, 'test'), { recursive: true })
  fs.writeFileSync(path.join(root, 'test/a.test.ts'), 'export {}\n')
  fs.writeFileSync(path.join(root, 'src.ts'), 'export const x = 1\n')
  fs.writeFileSync(path.join(root, '.env.local'), 'TOKEN=1\n')
  fs.writeFileSync(secret, 'fuzz-secret\n')
  const rules = fileRules(await collectWorkspace(root), [])
  const coverageFiles = path.join(dir, 'coverage-files')
  fs.mkdirSync(coverageFiles)
  const own = path.join(root, 'test/a.test.ts')
  ctx = {
    major: 5,
    rules,
    environments: () => ['ssr', 'client'],
    runFiles: () => [own],
    fileTaskId: (file) => (file === own ? 'own' : 'other'),
    isTask: (id) => id === 'other' || id === 'other_0',
    testEnvironment: () => 'node',
    projectName: '',
    projectRoot: root,
    coverageProvider: () => 'istanbul',
    // Vitest 5's provider reads the data from files in its folder.
    coverageFile: (json) => writeCoverageFile(coverageFiles, json),
    snapshotPath: () => {},
    benchmarkPath: (_method, file) => ({ path: String(file) }),
    envAllowed: (name) => name === 'MODE',
    bail: () => 1,
    failedTests: () => 0,
    budget: new RunBudget(),
  }
})

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

describe('the host gateway under random input', () => {
  it('ends the worker or passes only listed, screened calls under its own ids', () => {
    const seed = Number(process.env.VPS_FUZZ_SEED ?? 20261206) // another seed: VPS_FUZZ_SEED=n
    const rnd = seeded(seed)
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]
    const ids = () => [`${secret}?raw`, `file:${secret}`, `/@fs${secret}`, `/@id/${secret}`, `//${secret}`, `${root}/../host-secret.ts`, `./../host-secret`, `../host-secret.ts`, `vitest/../../${secret}`, `${root}/.env.local?raw`, `/src.ts`, `${root}/src.ts`, '/@id/__x00__virtual', 'node:fs', 'vitest', `${secret.replace(/\//g, '%2F')}`, '\u0000x', '']
    const values = (): unknown[] => [undefined, null, 0, -1, 1e300, '', 'x', '__proto__', 'constructor', pick(ids()), [], [pick(ids())], {}, { __proto__: null }, { path: secret }, 'own', 'own_0', 'other', 'other_0', true]
    let serial = 0
    const seedFrames = (): Record<string, unknown>[] => [
      { t: 'q', i: `a${++serial}`, m: 'fetch', a: [pick(ids()), `${root}/test/a.test.ts`, 'ssr', {}] },
      { t: 'q', i: `b${++serial}`, m: 'resolve', a: [pick(ids()), pick([undefined, `${root}/test/a.test.ts`, `${dir}/x.ts`]), 'ssr'] },
      { t: 'q', i: `c${++serial}`, m: 'ensureModuleGraphEntry', a: [pick(ids()), `${root}/test/a.test.ts`] },
      { t: 'q', i: `d${++serial}`, m: 'fetchWarmModules', a: ['ssr', [pick(ids()), pick(ids())]] },
      { t: 'q', i: `e${++serial}`, m: 'onTaskUpdate', a: [[['own_0', { state: 'pass' }, {}]], [['own_0', 'test-finished', undefined]]] },
      { t: 'q', i: `f${++serial}`, m: 'onAfterSuiteRun', a: [{ coverage: { [secret]: { path: secret } }, testFiles: ['test/a.test.ts'], environment: 'ssr', projectName: '' }] },
      { t: 'q', i: `g${++serial}`, m: 'resolveSnapshotPath', a: [pick([`${root}/test/a.test.ts`, `${root}/test/b.test.ts`, secret])] },
      { t: 'q', i: `h${++serial}`, m: 'onUserConsoleLog', a: [{ type: 'stdout', content: 'x', taskId: pick(['own', 'other', 'src/x.ts:1', '__vitest__unknown_test__']) }] },
      { t: 'q', i: `j${++serial}`, m: 'onUnhandledError', a: [{ message: 'x', stack: `Error\n    at ${secret}:1:1` }, 'Unhandled Error'] },
      { t: 'q', m: 'onCancel', a: [pick(['test-failure', 'keyboard-input'])] },
      { t: 'q', i: `l${++serial}`, m: 'snapshotSaved', a: [{ filepath: pick([`${root}/test/a.test.ts`, 'test/a.test.ts', `${root}/test/b.test.ts`, secret]), added: pick([0, 1, '1', -1]), fileDeleted: false, matched: 0, unchecked: 0, uncheckedKeys: pick([[], ['k'], [1]]), unmatched: 0, updated: 0 }] },
      { t: 'q', i: `k${++serial}`, m: pick([...Object.keys(REFUSED), '__proto__', 'toString', 'hasOwnProperty']), a: [] },
      { __vitest_worker_response__: true, type: pick(['started', 'testfileFinished', 'bogus', '__proto__']) },
      { t: 's', i: 'g1', r: 1 },
    ]
    const mutate = (frame: Record<string, unknown>): unknown => {
      const f: Record<string, unknown> = { ...frame, a: Array.isArray(frame.a) ? [...frame.a] : frame.a }
      for (let n = Math.floor(rnd() * 3); n > 0; n--) {
        const r = rnd()
        if (r < 0.3 && Array.isArray(f.a)) (f.a as unknown[])[Math.floor(rnd() * ((f.a as unknown[]).length + 1))] = pick(values())
        else if (r < 0.45) f.i = pick([f.i, 'a', 'b', 'g1', 0, -1, 'x'.repeat(100), {}, undefined])
        else if (r < 0.55) f.m = pick([...Object.keys(METHODS), '__proto__', 'constructor'])
        else if (r < 0.65) f.t = pick(['q', 's', 'x', undefined])
        else if (r < 0.7) f.a = pick(values())
      }
      return rnd() < 0.02 ? pick(values()) : f
    }
    const secretNamed = (v: unknown) => JSON.stringify(v ?? null).includes(secret) && !JSON.stringify(v).includes('.vitest-sandbox-absent-')
    /** Whether a forwarded module call names the host file, by any reading Vite may make of its id. */
    const namesSecret = (args: unknown[]): boolean => {
      if (secretNamed(args)) return true
      const [id, importer] = args
      if (typeof id !== 'string') return false
      const bare = id.replace(/[?#].*$/, '')
      const decoded = (() => { try { return decodeURIComponent(bare) } catch { return bare } })()
      const forms = [bare, decoded].flatMap((f) => [f, f.replace(/^file:\/*(localhost)?/, '/'), f.replace(/^\/@(fs|id)\/*/, '/')])
      const from = path.dirname(typeof importer === 'string' ? importer : `${root}/x`)
      const readings = forms.flatMap((f) => (f.startsWith('.') ? [path.resolve(from, f)] : f.startsWith('/') ? [path.resolve(f), path.join(root, f)] : [path.resolve(root, 'node_modules', f)]))
      const stem = (p: string) => p.replace(/\.ts$/, '')
      return readings.some((r) => stem(r) === stem(secret))
    }

    let passed = 0
    let ended = 0
    for (let round = 0; round < 1500; round++) {
      const gateway = new Gateway(ctx)
      const asked = new Map<string, { workerId: unknown; method: string }>() // host id -> the worker id it must come back as
      for (let step = 0; step < 25; step++) {
        // Mostly what a worker sends, a third of the time mutated.
        const frame = rnd() < 0.35 ? mutate(pick(seedFrames())) : pick(seedFrames())
        let out
        try {
          out = gateway.fromWorker(frame, Math.floor(rnd() * 1024 * 1024))
        } catch (err) {
          expect(err, `round ${round} step ${step}: ${String((err as Error).stack)}`).toBeInstanceOf(ProtocolViolation)
          ended++
          break
        }
        passed++
        const host = out.toHost as Record<string, any> | undefined
        if (host && !host.__vitest_worker_response__) {
          expect(host.t).toBe('q')
          const spec = methodSpec(host.m, 5)
          expect(spec, host.m).toBeDefined()
          expect(badArguments(host.m, spec!, host.a)).toBeUndefined()
          if (spec!.rule === 'module') expect(namesSecret(host.a), JSON.stringify(host.a)).toBe(false)
          if (spec!.rule === 'warm') for (const id of host.a[1]) expect(namesSecret([id]), id).toBe(false)
          if (host.m === 'snapshotSaved') expect([`${root}/test/a.test.ts`, 'test/a.test.ts']).toContain(host.a[0].filepath)
          if (host.m === 'onCancel') expect(host.a).toEqual(['test-failure'])
          if (host.i !== undefined) {
            expect(host.i).toMatch(/^g\d+$/)
            asked.set(host.i, { workerId: (frame as Record<string, unknown>).i, method: host.m })
          }
        }
        if (out.toWorker) expect(out.toWorker.i).toBe((frame as Record<string, unknown>).i)
        // The host answers some of what was asked, with random results; each goes back under the worker's id.
        for (const [hostId, { workerId, method }] of [...asked]) {
          if (rnd() < 0.5) continue
          asked.delete(hostId)
          const back = gateway.fromHost({ t: 's', i: hostId, ...(rnd() < 0.5 ? { r: pick(values()) } : { e: { message: pick(values()) } }) })
          if (back.toWorker) expect(back.toWorker.i).toBe(workerId)
          // A module answer naming the host file is screened (or asked again for a twin).
          if (METHODS[method].rule === 'module' && back.toWorker?.e === undefined) expect(secretNamed(back.toWorker), JSON.stringify(back.toWorker)).toBe(false)
          // An error may mention what the worker asked for, but never as a path of its own.
          if (METHODS[method].rule === 'module' && back.toWorker?.e !== undefined) expect(JSON.stringify(back.toWorker.e)).not.toMatch(new RegExp(`(?:^|[\\s'"(<\\[=,])${secret.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`))
          const retry = back.toHost as Record<string, any> | undefined
          if (retry) {
            expect(retry.i).toMatch(/^g\d+$/)
            expect(namesSecret(retry.a)).toBe(false)
            asked.set(retry.i, { workerId, method })
          }
        }
        // An answer to nothing the gateway asked goes nowhere.
        expect(gateway.fromHost({ t: 's', i: pick(['a', 'g999999', 0]), r: 1 })).toEqual({})
      }
    }
    // What one worker holds in flight is bounded in bytes too.
    const gateway = new Gateway(ctx)
    const big = 100 * 1024 * 1024
    for (const n of [1, 2]) gateway.fromWorker({ t: 'q', i: `big${n}`, m: 'getCountOfFailedTests', a: [] }, big)
    expect(() => gateway.fromWorker({ t: 'q', i: 'big3', m: 'getCountOfFailedTests', a: [] }, big)).toThrow(/over 256 MiB of calls in flight/)
    gateway.fromHost({ t: 's', i: 'g1', r: 0 })
    expect(gateway.fromWorker({ t: 'q', i: 'big3', m: 'getCountOfFailedTests', a: [] }, big).toHost).toMatchObject({ i: 'g3' })
    // And the module code it is sent: the host keeps every module it transforms.
    const fetcher = new Gateway(ctx)
    const fetchSrc = (i: string) => fetcher.fromWorker({ t: 'q', i, m: 'fetch', a: [`${root}/src.ts?raw&v=${i}`, undefined, 'ssr', {}] })
    for (let n = 0; n < 2; n++) {
      const asked = fetchSrc(`m${n}`).toHost as { i: string }
      fetcher.fromHost({ t: 's', i: asked.i, r: { code: 'c'.repeat(200 * 1024 * 1024), file: `${root}/src.ts`, id: `${root}/src.ts`, url: '/src.ts', invalidate: false } })
    }
    expect(() => fetchSrc('m2')).toThrow(/over 256 MiB of module code/)
    // And the ids it asks for: Vitest keeps each (externals such as data: URLs, durations).
    const asker = new Gateway(ctx)
    const data = (n: number) => asker.fromWorker({ t: 'q', m: 'fetch', i: `d${n}`, a: [`data:text/javascript,${String(n).padEnd(4000, 'x')}`, undefined, 'ssr', {}] })
    let n = 0
    expect(() => {
      for (; n < 30_000; n++) asker.fromHost({ t: 's', i: (data(n).toHost as { i: string }).i, r: { externalize: 'data:', type: 'module' } })
    }).toThrow(/over 128 MiB of module ids/)
    expect(n).toBeGreaterThan(19_000)
    // Short ones count as the host holds them, an entry of Vite's module graph each: counted by
    // their characters, one worker's 1.5 million `e.js?q=N` grew the host to 3.7 GiB.
    const short = new Gateway(ctx)
    let q = 0
    expect(() => {
      for (; q < 200_000; q++) short.fromHost({ t: 's', i: (short.fromWorker({ t: 'q', m: 'fetch', i: `q${q}`, a: [`${root}/e.js?q=${q}`, undefined, 'ssr', {}] }).toHost as { i: string }).i, r: { code: '', file: `${root}/e.js`, id: `${root}/e.js?q=${q}`, url: `/e.js?q=${q}`, invalidate: false } })
    }).toThrow(/over 128 MiB of module ids/)
    expect(q).toBeLessThan(60_000)
    // Both outcomes were exercised, many times.
    expect(passed).toBeGreaterThan(2000)
    expect(ended).toBeGreaterThan(500)
  })

  it('bounds what the workers of one run make the host keep together, not only each', () => {
    const MiB = 1024 * 1024
    const budget = new RunBudget({ ...RUN_LIMITS, kept: 10 * MiB, moduleCode: 100 * MiB, moduleIds: MiB, coverage: MiB })
    const workers = [1, 2, 3].map(() => new Gateway({ ...ctx, budget }))
    // Logs: 4 MiB from each worker is under a worker's bound, the third goes over the run's.
    const log = (g: Gateway) => g.fromWorker({ t: 'q', m: 'onUserConsoleLog', a: [{ type: 'stdout', content: 'x', time: 0 }] }, 4 * MiB)
    log(workers[0])
    log(workers[1])
    expect(() => log(workers[2])).toThrow(/over 10 MiB of results, logs and errors sent by the run's workers together/)
    budget.newRun() // watch mode: Vitest let go of the last run's results
    log(workers[2])
    // Module code: the same module fetched by every worker is kept once; distinct ones add up.
    const fetch = (g: Gateway, i: string, id: string, chars: number) => {
      const asked = g.fromWorker({ t: 'q', i, m: 'fetch', a: [id, undefined, 'ssr', {}] }).toHost as { i: string }
      g.fromHost({ t: 's', i: asked.i, r: { code: 'c'.repeat(chars), file: `${root}/src.ts`, id, url: '/src.ts', invalidate: false } })
    }
    for (const [n, g] of workers.entries()) fetch(g, `same${n}`, `${root}/src.ts`, 60 * MiB)
    fetch(workers[0], 'v1', `${root}/src.ts?v=1`, 60 * MiB)
    expect(() => fetch(workers[1], 'v2', `${root}/src.ts?v=2`, 1)).toThrow(/over 100 MiB of code of distinct modules sent to the run's workers together/)
    // Code past Latin-1 counts as the host holds it, two bytes a character (a sandbox's generated
    // modules of CJK text grew the host past its heap under a bound counted in characters).
    const wide = new RunBudget({ ...RUN_LIMITS, moduleCode: 100 * MiB })
    const [w1, w2] = [1, 2].map(() => new Gateway({ ...ctx, budget: wide }))
    const send = (g: Gateway, i: string, id: string, code: string) => {
      const asked = g.fromWorker({ t: 'q', i, m: 'fetch', a: [id, undefined, 'ssr', {}] }).toHost as { i: string }
      g.fromHost({ t: 's', i: asked.i, r: { code, file: `${root}/src.ts`, id, url: '/src.ts', invalidate: false } })
    }
    send(w1, 'n1', `${root}/src.ts?n=1`, 'c'.repeat(60 * MiB))
    send(w1, 'w1', `${root}/src.ts?w=1`, '中'.repeat(30 * MiB))
    expect(() => send(w2, 'w2', `${root}/src.ts?w=2`, 'c')).toThrow(/over 100 MiB of code of distinct modules/)
    // Module ids: distinct ones add up over workers, the same one counts once.
    const ids = new RunBudget({ ...RUN_LIMITS, kept: MiB, moduleCode: MiB, moduleIds: MiB, coverage: MiB })
    const askers = [1, 2].map(() => new Gateway({ ...ctx, budget: ids }))
    const ask = (g: Gateway, n: number) => g.fromWorker({ t: 'q', m: 'resolve', i: `r${n}`, a: [`data:text/javascript,${String(n).padEnd(4000, 'x')}`, undefined, 'ssr'] })
    for (let n = 0; n < 100; n++) for (const g of askers) ask(g, n)
    expect(() => {
      for (let n = 100; n < 1000; n++) ask(askers[n % 2], n)
    }).toThrow(/over 1 MiB of distinct module ids asked for by the run's workers together/)
  })
})

describe('stacks the host parses', () => {
  it("name no host file to Vitest's own stack parser, however a frame is written", () => {
    const seed = Number(process.env.VPS_FUZZ_SEED ?? 20261206)
    const rnd = seeded(seed)
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]
    const up = '../'.repeat(12)
    const target = secret.slice(1)
    // Ways a frame can name the secret that a reader other than Vitest's might take for another file.
    const locations = [secret, `${up}${target}`, `${secret}?vitest=1733520000000`, `${secret}#x`, `file://${secret}`, `/@fs${secret}`, `async ${secret}`, `${root}/..\\..\\${target}`, `${root}/x/../../${path.basename(secret)}`, `eval at g (${up}${target}:2:1), x`, `eval at g (${secret}:2:1), <anonymous>`, 'node:fs', `http://localhost${secret}?import`]
    const methods = ['', 'f', 'async f', 'Object.<anonymous>', 'x (eval', 'new Foo', 'a,b', 'eval']
    // Every JavaScript line terminator: Vitest splits at \n, its frame test is multiline.
    const breaks = ['\n', '\n', '\r', '\r\n', '\u2028', '\u2029']
    // The gateway's own rule: a path where nothing is may be named.
    const mayFrame = (file: string) => ctx.rules.mayName(file)
    for (let n = 0; n < 2000; n++) {
      const lines = Array.from({ length: 1 + Math.floor(rnd() * 4) }, () => {
        const method = pick(methods)
        const at = `${pick(locations)}:${1 + Math.floor(rnd() * 3)}:${1 + Math.floor(rnd() * 9)}`
        // V8's form, Firefox's (`fn@file:1:2`), or message text.
        return pick([method ? `    at ${method} (${at})` : `    at ${at}`, `${method}@${at}`, `Q ${pick(methods)}`])
      })
      let stack = 'Error: m'
      for (const line of lines) stack += pick(breaks) + line
      const error: Record<string, unknown> = { message: 'm', stack }
      // Where the stack gives no frame, Vitest reads one from Firefox's and Safari's fields.
      if (rnd() < 0.3) Object.assign(error, { fileName: `${pick(['', 'at '])}${pick(locations)}`, lineNumber: 2, columnNumber: 1 })
      if (rnd() < 0.3) Object.assign(error, { sourceURL: pick(locations), line: 2, _column: 1, column: 1 })
      screenStacks(error, mayFrame)
      for (const frame of parseErrorStacktrace(error as any, { ignoreStackEntries: [] })) {
        if (!frame.file.startsWith(ABSENT)) expect(mayFrame(frame.file), `${frame.file}\nfrom\n${JSON.stringify(stack)}\n(seed ${seed})`).toBe(true)
      }
    }
  })
})

describe('benchmark results and artifacts (Vitest 5)', () => {
  it('writes only benchmark statistics, and screens the stacks of an artifact the host parses', () => {
    const gateway = new Gateway(ctx)
    const write = (i: string, data: unknown) => gateway.fromWorker({ t: 'q', i, m: 'writeBenchmarkResult', a: ['bench.json', data] })
    const stats = { latency: { mean: 1, samples: [1, 2] }, throughput: { mean: 2 }, period: 1, totalTime: 2 }
    expect((write('w1', { ...stats, hooks: { 'pre-commit': 'touch x' } }).toHost as { a: unknown[] }).a[1]).toEqual(stats)
    expect(write('w2', { 'pre-commit': { commands: { x: { run: 'touch x' } } } }).toWorker).toMatchObject({ e: { message: expect.stringMatching(/is not a benchmark result/) } })
    expect(write('w3', { ...stats, latency: { mean: 'touch x' } }).toWorker).toMatchObject({ e: { message: expect.stringMatching(/is not a benchmark result/) } })
    const trace = { type: 'internal:browserTrace', data: { entries: [{ stack: `Error: x\n    at probe (${secret}:1:1)` }, { stack: `Error: x\n    at probe (${root}/src.ts:1:1)` }] }, attachments: [] }
    const sent = gateway.fromWorker({ t: 'q', i: 'a1', m: 'onTaskArtifactRecord', a: ['own_0', trace] }).toHost as { a: [string, typeof trace] }
    expect(sent.a[1].data.entries[0].stack).toBe(`Error: x\n    at probe (${ABSENT}${secret}:1:1)`)
    expect(sent.a[1].data.entries[1].stack).toBe(`Error: x\n    at probe (${root}/src.ts:1:1)`)
  })
})

describe('decisions about files a run changes', () => {
  it('decides a frame again after the host wrote a file, and words host exceptions of other calls in one message', () => {
    const gateway = new Gateway(ctx)
    const made = path.join(root, 'test/made-in-run.txt')
    const frameOf = (i: string) => {
      const sent = gateway.fromWorker({ t: 'q', i, m: 'onTaskUpdate', a: [[['own_0', { state: 'fail', errors: [{ message: 'm', stack: `Error: m\n    at f (${made}:1:1)` }] }, {}]], []] }).toHost as { a: any[] }
      return sent.a[0][0][1].errors[0].stack as string
    }
    // Nothing there yet: the frame may name it.
    expect(frameOf('u1')).toContain(`(${made}:1:1)`)
    // A file snapshot makes it, naming a host file as its source map (Vitest would read that map).
    fs.writeFileSync(made, `//# sourceMappingURL=${secret}\n`)
    try {
      const step = gateway.fromWorker({ __sandbox_pool__: true, id: 1, op: 'snapshot:write', args: [made, 'x'] })
      step.hostFile!.answered(null)
      expect(frameOf('u2')).toContain(`(${ABSENT}${made}:1:1)`)
    } finally {
      fs.rmSync(made, { force: true })
    }
    // The host's exception for a task call may quote what it read: the worker gets one message.
    const asked = gateway.fromWorker({ t: 'q', i: 'u3', m: 'onTaskUpdate', a: [[], []] }).toHost as { i: string }
    const back = gateway.fromHost({ t: 's', i: asked.i, e: new SyntaxError(`Unexpected token 'T', "TOPSECRET-"... is not valid JSON`) }).toWorker as { e: Error }
    expect(back.e.message).toBe('vitest-pool-sandbox: the host could not carry out onTaskUpdate')
  })
})

describe('worker responses and errors the host acts on', () => {
  it('passes a response only when the host waits for it, rebuilt, and a skip signal only for the worker\'s own tests', () => {
    const gateway = new Gateway(ctx)
    const finished = (extra: object = {}) => gateway.fromWorker({ __vitest_worker_response__: true, type: 'testfileFinished', ...extra })
    expect(() => finished()).toThrow(/a "testfileFinished" response the host is not waiting for/)
    gateway.responses.requested('run')
    // Before the file's own result: only with the error that stopped the run.
    expect(() => finished()).toThrow(/"testfileFinished" before its file reported a result/)
    const error: any = { name: 'Error', message: 'setup failed', code: 'VITEST_PENDING', taskId: 'other_0' }
    expect(() => finished({ error })).toThrow(/a skip signal for task "other_0", which is not a task of this worker's file/)
    // (A violation ends the worker; here the same gateway goes on, still waiting for that run.)
    const cyclic: any = { name: 'Error', message: 'setup failed' }
    cyclic.cause = cyclic
    // A field a response does not have (another kind's, which another reader may go by) ends the worker.
    expect(() => finished({ error: cyclic, usedMemory: 5, t: 'q' })).toThrow(/a message with a field "t" that its kind does not have/)
    expect(finished({ error: cyclic, usedMemory: 5 }).toHost).toEqual({ __vitest_worker_response__: true, type: 'testfileFinished', error: { name: 'Error', message: 'setup failed', cause: '[Circular]' }, usedMemory: 5 })
    gateway.responses.requested('run')
    gateway.fromWorker({ t: 'q', m: 'onTaskUpdate', a: [[['own', { state: 'pass' }, {}]], []] })
    expect(finished().toHost).toEqual({ __vitest_worker_response__: true, type: 'testfileFinished' })
    expect(() => finished()).toThrow(/not waiting for/)
    expect(() => gateway.fromWorker({ __vitest_worker_response__: true, type: 'stopped' })).toThrow(/not waiting for/)
    gateway.responses.requested('stop')
    expect(gateway.fromWorker({ __vitest_worker_response__: true, type: 'stopped' }).toHost).toEqual({ __vitest_worker_response__: true, type: 'stopped' })
    // onUnhandledError: the skip signal and the error's origin must be the worker's own.
    const unhandled = (e: object) => gateway.fromWorker({ t: 'q', m: 'onUnhandledError', a: [e, 'Unhandled Error'] })
    expect(() => unhandled({ name: 'AggregateError', message: 'm', errors: [{ message: 'x', code: 'VITEST_PENDING', taskId: 'other_0' }] })).toThrow(/skip signal for task "other_0"/)
    expect(() => unhandled({ message: 'm', VITEST_TEST_PATH: secret })).toThrow(/an error said to come from a file that is not this worker's/)
    expect(unhandled({ message: 'm', code: 'VITEST_PENDING', taskId: 'own_1', VITEST_TEST_PATH: path.join(root, 'test/a.test.ts') }).toHost).toMatchObject({ m: 'onUnhandledError' })
  })
})
