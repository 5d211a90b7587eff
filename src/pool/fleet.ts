/**
 * The fleet of one Vitest run: the provider session, the template, the packed bundle (runtime and
 * workspace), and its sandboxes, each running one agent with `concurrency` worker slots. All
 * sandboxes are created at once, as soon as the template is known, while the workspace is packed.
 * Files wait in one queue, in Vitest's order (longest first), and each takes the first free slot
 * of any sandbox, so a late or lost sandbox never holds back a file another one could run.
 * Everything is killed when Vitest closes.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import pLimit from 'p-limit'
import type { ResolvedOptions } from './options.js'
import { AgentLink } from './agent-link.js'
import { InspectorRelay } from './inspector.js'
import { SlotQueue, type Lease, type SlotHost } from './slots.js'
import { Bundles, startAgent, syncDelta } from './transfer.js'
import { renewTtl, STAGING } from '../providers/exec.js'
import { installIn, withinTimeout, type BuildPlan } from '../template/build.js'
import { templateName } from '../template/key.js'
import { createProgress, type ProgressSink } from '../template/progress.js'
import { chooseSource, ensureTemplate, keyInputs, TEMPLATE_LABEL, type Template, type TemplateSpec } from '../template/template.js'
import { collectWorkspace, findWorkspaceRoot, nodeModulesFolders, type Workspace, type WorkspaceFile } from '../workspace/collect.js'
import { autoSandboxes, type RunHistory } from './schedule.js'
import { formatUsage, RunUsage, SandboxUsage } from './usage.js'
import { POOL_LABEL, RUN_LABEL, type ProviderSandbox, type ProviderSession } from '../providers/types.js'
import { debug } from '../debug.js'
import { RunBudget } from './gateway/budget.js'

const log = debug('fleet')
/** Sandbox creations in flight at once (a provider's API is not a place for a thundering herd). */
const CREATE_CONCURRENCY = 8
const usageLog = debug('usage')

export interface SandboxHost extends SlotHost {
  sandbox: ProviderSandbox
  link: AgentLink
  /** Node version of the sandbox's agent (decides the codec). */
  node: string
}

export interface FleetLogger extends ProgressSink {
  error(text: string): void
}

export class Fleet {
  readonly runId = `vps-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`
  readonly providerName: string
  /** What the host keeps for the run, over all workers (the host gateway's run-wide bounds). */
  readonly budget = new RunBudget()
  workspace!: Workspace
  private session?: ProviderSession
  private template?: Template
  /** What the dependencies were made from when the sandboxes started (watch mode compares it). */
  private dependencyKey?: string
  private readonly bundles = new Bundles()
  private initializing?: Promise<void>
  private readonly slots: SlotQueue<SandboxHost>
  private get hosts(): SandboxHost[] {
    return this.slots.hosts
  }
  /** How many sandboxes this run holds (fixed, or sized by 'auto' at the start). */
  private target = 0
  /** Creations in flight; close waits for them, so that none outlives the run. */
  private readonly starting = new Set<Promise<unknown>>()
  private get creating(): number {
    return this.starting.size
  }
  /** Creations that failed; once they reach `target`, no more are tried. */
  private failedStarts = 0
  private lastStartError?: Error
  private readonly createLimit = pLimit(CREATE_CONCURRENCY)
  private closed = false
  private connecting?: Promise<ProviderSession>
  private fellBack = false
  readonly usage: RunUsage
  private relay?: InspectorRelay
  /** The debugger's relay, made when a worker first runs with the inspector on. */
  get inspector(): InspectorRelay {
    return (this.relay ??= new InspectorRelay())
  }

  /** `history`: what Vitest recorded of the run's files, for `sandboxes: 'auto'`. */
  constructor(
    private readonly opts: ResolvedOptions,
    private readonly projectRoot: string,
    readonly logger: FleetLogger,
    private readonly outputs: string[] = [],
    private readonly history: () => RunHistory = () => ({ durations: [], unknown: 0 }),
  ) {
    this.providerName = opts.provider.name
    this.usage = new RunUsage(this.providerName, this.runId, opts.concurrency)
    this.slots = new SlotQueue(opts.concurrency, () => this.starved(), (ms) => this.usage.fileDone(ms))
  }

  /**
   * Connect, find or build the template, pack the workspace. Once. A failure is printed once, in
   * full; every file that then cannot run says so in one line.
   */
  init(): Promise<void> {
    this.initializing ??= this.prepare().catch((err: Error) => {
      this.logger.error(err.message)
      throw new Error(`the sandbox pool could not start (${err.message.split('\n')[0]}); the full error is printed above`)
    })
    return this.initializing
  }

  private async prepare(): Promise<void> {
    if (process.platform === 'win32') {
      // Sandboxes are Linux and get the workspace at the host's own absolute path.
      throw new Error(`sandbox: Windows hosts are not supported yet: sandboxes are Linux and receive the workspace at the same absolute path as on the host (${this.projectRoot}). Run Vitest from WSL, or from a Linux or macOS machine.`)
    }
    const root = findWorkspaceRoot(this.projectRoot)
    this.workspace = await this.collect(root)
    if (this.workspace.secrets.length) {
      const shown = this.workspace.secrets.slice(0, 3).join(', ') + (this.workspace.secrets.length > 3 ? `, and ${this.workspace.secrets.length - 3} more` : '')
      this.logger.log(`sandbox: not sending ${this.workspace.secrets.length} secret-like file${this.workspace.secrets.length === 1 ? '' : 's'} (${shown}); send one with sandbox({ workspace: { include: ['<name>'] } })`)
    }
    this.bundles.pack(this.workspace, () => this.creating > 0)
    this.session = await this.connect()
    if (this.session.alwaysOnline && this.opts.network !== 'allow') {
      throw new Error(`sandbox: ${this.providerName} sandboxes cannot be cut off from the network, and this run keeps it off (network: 'none', the default). To run there with the network reachable from tests, set sandbox({ network: 'allow' }).`)
    }
    await this.prepareTemplate()
    this.target = this.sandboxCount()
    log('run %s: workspace %s (%d files, %d bytes), template %s (%s), %d sandboxes', this.runId, root, this.workspace.files.length, this.workspace.bytes, this.template?.id ?? 'none', this.template?.source, this.target)
    this.fill()
  }

  /** The fixed count, or what 'auto' makes of the run's recorded durations. */
  private sandboxCount(): number {
    if (this.opts.sandboxes !== 'auto') return this.opts.sandboxes
    const history = this.history()
    const n = autoSandboxes(history, this.opts.concurrency, this.opts.maxSandboxes)
    const files = history.durations.length + history.unknown
    const recorded = history.durations.reduce((a, b) => a + b, 0) / 1000
    this.logger.log(`sandbox: 'auto' chose ${n} sandbox${n === 1 ? '' : 'es'} (of at most ${this.opts.maxSandboxes}) for ${files} file${files === 1 ? '' : 's'}, ${history.durations.length ? `${recorded.toFixed(1)}s recorded at the last run${history.unknown ? ` and ${history.unknown} with no record` : ''}` : 'none with a recorded duration'}`)
    return n
  }

  /**
   * The provider session, once. With a fallback, one call that needs the network and the key
   * (listing this run's sandboxes) proves the provider can be reached before anything relies on it.
   */
  private connect(): Promise<ProviderSession> {
    this.connecting ??= (async () => {
      const session = await this.opts.provider.connect()
      if (this.opts.fallback === 'forks') {
        await session.listSandboxes(this.labels()).catch(async (err: Error) => {
          await session.close().catch(() => {})
          throw err
        })
      }
      return session
    })()
    return this.connecting
  }

  /** With `fallback: 'forks'`: the error that makes the provider unreachable, if it is. */
  unreachable(): Promise<Error | undefined> {
    if (this.opts.fallback !== 'forks') return Promise.resolve(undefined)
    return this.connect().then(() => undefined, (err: Error) => err)
  }

  /** Said once per run, loudly: the files run on the host. */
  warnFallback(error: Error): void {
    if (this.fellBack) return
    this.fellBack = true
    this.logger.error(
      `sandbox: WARNING: ${this.providerName} cannot be reached (${error.message.split('\n')[0]}).\n` +
        "sandbox: fallback: 'forks' is set, so every test file runs on Vitest's forks pool ON THIS MACHINE, outside any sandbox.",
    )
  }

  /** Find or build the template (before any worker needs it), and note what it was made from. */
  private async prepareTemplate(): Promise<void> {
    const spec = templateSpec(this.opts, this.workspace)
    this.dependencyKey = this.currentDependencyKey()
    this.template = await ensureTemplate(this.session!, spec, this.providerName, () => createProgress('sandbox: template', this.logger), this.labels())
  }

  /** The template key of the dependencies as they are now (also when there is nothing to build). */
  private currentDependencyKey(): string {
    const spec = { root: this.workspace.root, setup: this.opts.setup, dependencies: this.opts.dependencies }
    return templateName(keyInputs(this.session!, spec, chooseSource(this.session!, spec, this.providerName)))
  }

  /** What of `root` the sandboxes are given, now. */
  private collect(root: string): Promise<Workspace> {
    return collectWorkspace(root, { ...this.opts.workspace, outputs: this.outputs })
  }

  private labels(): Record<string, string> {
    return { [POOL_LABEL]: 'pool', [RUN_LABEL]: this.runId }
  }

  /**
   * A worker slot: the first free one, on the least-loaded sandbox, in the order asked. `signal`
   * withdraws the request (Vitest stopped the worker before it got a slot).
   */
  async lease(signal?: AbortSignal): Promise<Lease<SandboxHost>> {
    await this.init()
    if (this.closed) throw new Error('the sandbox pool is closed')
    return this.slots.lease(signal)
  }

  /** Files wait and no slot is free: replace lost sandboxes, or fail them when none can come. */
  private starved(): void {
    if (this.closed) return
    this.fill()
    if (this.creating === 0 && !this.hosts.some((h) => h.link.alive)) this.slots.failAll(new Error(this.lastStartError?.message ?? 'every sandbox of the run was lost'))
  }

  /** Create sandboxes until the run has its count (alive or on the way), within the failure budget. */
  private fill(): void {
    while (!this.closed && this.hosts.filter((h) => h.link.alive).length + this.creating < this.target && this.failedStarts < this.target) {
      const usage = new SandboxUsage()
      this.usage.sandboxes.push(usage)
      const start = this.createLimit(() => this.startSandbox(usage)).then(
        (host) => {
          this.starting.delete(start)
          this.hosts.push(host)
          this.slots.dispatch()
        },
        (err: Error) => {
          this.starting.delete(start)
          this.failedStarts++
          this.lastStartError = err
          usage.close(err.message)
          const alive = this.hosts.some((h) => h.link.alive)
          if (!this.closed) this.logger.error(alive || this.creating ? `${err.message} (the run goes on with the other sandboxes)` : err.message)
          this.slots.dispatch()
        },
      )
      this.starting.add(start)
    }
  }

  /**
   * A sandbox a worker ran in with its inspector serves no later file: Node's inspector takes any
   * client, and a process an earlier test file left in the sandbox drove the next file's worker
   * through it. Ended, and replaced if files wait (Vitest runs one such worker at a time).
   */
  retire(host: SandboxHost): void {
    host.usage.close()
    host.link.lose('a worker ran in it with the inspector')
  }

  /** Where the sandbox runtime (agent, worker entry) runs from inside the fleet's sandboxes. */
  get runtimeDir(): string {
    return this.session?.runtimeDir ?? STAGING
  }

  private async startSandbox(usage: SandboxUsage): Promise<SandboxHost> {
    const root = this.workspace.root
    const { id: template, name, hostLayers } = this.template!
    const labels = { ...this.labels(), ...(name ? { [TEMPLATE_LABEL]: name } : {}) }
    const unkept = this.template!.unkept
    // Dependencies read-only once installed: no test file can change the code a later worker loads.
    const readOnly = unkept ? undefined : nodeModulesFolders(root)
    const sandbox = await this.session!.createSandbox({ template, hostLayers, readOnly, timeoutSec: this.opts.timeout, labels, network: this.opts.network === 'allow' })
    usage.id = sandbox.id
    try {
      if (unkept) await this.installOwn(sandbox, unkept)
      const agent = await startAgent(sandbox, await this.bundles.current(), root, this.runtimeDir)
      const link = new AgentLink(agent, { direct: sandbox.channel })
      link.onLost = (reason) => {
        log('sandbox %s (%s) lost: %s', sandbox.id, this.providerName, reason)
        usage.close(reason)
        if (!this.closed) void sandbox.kill().catch(() => {})
        this.slots.dispatch()
      }
      const { node } = await link.hello
      usage.readyAt = Date.now()
      log('sandbox %s ready (%s, node %s)', sandbox.id, this.providerName, node)
      renewTtl(sandbox, this.opts.timeout, () => !this.closed && link.alive)
      return { sandbox, link, node, active: 0, usage }
    } catch (err) {
      await sandbox.kill().catch(() => {})
      throw new Error(`sandbox: could not start sandbox ${sandbox.id} (${this.providerName}): ${(err as Error).message}`)
    }
  }

  /** Where the provider keeps no templates: this sandbox runs the template's steps itself. */
  private async installOwn(sandbox: ProviderSandbox, plan: BuildPlan): Promise<void> {
    const started = Date.now()
    const stopRenewing = renewTtl(sandbox, this.opts.timeout)
    try {
      const progress = { step: (text: string) => log('sandbox %s: %s', sandbox.id, text), output: () => {}, end: () => {} }
      await withinTimeout((p) => installIn(sandbox, plan, p), progress, this.opts.templateTimeout, sandbox)
    } finally {
      stopRenewing()
    }
    log('sandbox %s: its own dependencies took %d ms', sandbox.id, Date.now() - started)
  }

  /**
   * Watch mode: before a rerun, send the warm sandboxes only what changed in the workspace since
   * the last upload (changed and new files as a tar, deleted files by name). Module code is always
   * fresh (it comes over RPC); this keeps files that tests read from disk fresh too.
   */
  async sync(): Promise<void> {
    if (!this.initializing || this.closed) return
    await this.init()
    for (const h of this.hosts) if (h.link.alive) h.link.clearModuleCache()
    if (this.currentDependencyKey() !== this.dependencyKey) return this.replaceSandboxes()
    const before = new Map(this.workspace.files.map((f) => [f.path, signature(f)]))
    const next = await this.collect(this.workspace.root)
    const changed = next.files.filter((f) => before.get(f.path) !== signature(f))
    const present = new Set(next.files.map((f) => f.path))
    const removed = [...before.keys()].filter((p) => !present.has(p))
    this.workspace = next
    if (!changed.length && !removed.length) return
    log('run %s: syncing changed %s and removed %s', this.runId, JSON.stringify(changed.slice(0, 50).map((f) => f.path)), JSON.stringify(removed.slice(0, 50)))
    this.bundles.pack(next, () => this.creating > 0) // for sandboxes created later
    const live = this.hosts.filter((h) => h.link.alive)
    await Promise.all(live.map((h) => syncDelta(h.sandbox, next.root, changed, removed)))
    const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`
    this.logger.log(`sandbox: synced ${plural(changed.length, 'changed file')} and ${plural(removed.length, 'removed file')} to ${plural(live.length, 'sandbox')}`)
  }

  /**
   * Watch mode, after the dependencies changed (a lockfile, the installed tree): a new template,
   * and new sandboxes from it with the workspace as it is now. The warm ones go.
   */
  private async replaceSandboxes(): Promise<void> {
    this.logger.log('sandbox: the dependencies changed; preparing the template again and replacing the warm sandboxes')
    this.workspace = await this.collect(this.workspace.root)
    await this.prepareTemplate()
    this.bundles.pack(this.workspace, () => this.creating > 0)
    await Promise.all(this.starting)
    for (const h of this.hosts) h.usage.close()
    await killHosts(this.hosts.splice(0))
    this.failedStarts = 0
    this.slots.dispatch()
  }

  /** Kill every sandbox and close the provider session. Safe to call more than once. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.slots.failAll(new Error('the sandbox pool is closed'))
    this.relay?.close()
    await this.initializing?.catch(() => {})
    // Vitest closes its pool (stopping the last workers) at the same time as it calls onClose:
    // let those workers say goodbye before their sandboxes go.
    const deadline = Date.now() + 10_000
    while (this.hosts.some((h) => h.active > 0 && h.link.alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    await Promise.all(this.starting)
    for (const h of this.hosts) h.usage.close()
    if (this.usage.sandboxes.length) this.reportUsage()
    await killHosts(this.hosts)
    await this.killLeftovers()
    await this.session?.close().catch(() => {})
    await this.bundles.dispose()
  }

  /** Print the usage report; write it as JSON where asked. */
  private reportUsage(): void {
    const report = this.usage.report()
    this.logger.log(formatUsage(report).join('\n'))
    usageLog('%s', JSON.stringify(report))
    if (this.opts.usageFile) {
      const file = path.resolve(this.projectRoot, this.opts.usageFile)
      try {
        fs.writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`)
      } catch (err) {
        this.logger.error(`sandbox: could not write the usage report to ${file} (usageFile): ${(err as Error).message}`)
      }
    }
  }

  /**
   * Sandboxes of this run the fleet does not hold: a create whose answer was lost (and retried),
   * a start that failed half-way. Found by the run's label, killed.
   */
  private async killLeftovers(): Promise<void> {
    if (!this.session) return
    try {
      const left = await this.session.listSandboxes({ [RUN_LABEL]: this.runId })
      if (left.length) log('run %s: killing %d sandboxes it did not hold: %s', this.runId, left.length, left.map((s) => s.id).join(', '))
      await Promise.all(left.map((s) => this.session!.killSandbox(s.id).catch(() => false)))
    } catch (err) {
      log('run %s: listing leftover sandboxes failed: %s', this.runId, (err as Error).message)
    }
  }
}

/** Close the agent links and kill the sandboxes. */
async function killHosts(hosts: SandboxHost[]): Promise<void> {
  await Promise.all(hosts.map(async (h) => {
    h.link.close()
    await h.sandbox.kill().catch(() => {})
  }))
}

/** The template a run with these options needs for this workspace. */
export function templateSpec(opts: ResolvedOptions, workspace: Workspace): TemplateSpec {
  return { root: workspace.root, setup: opts.setup, dependencies: opts.dependencies, installEnv: opts.installEnv, files: workspace.files, timeoutSec: opts.templateTimeout }
}

function signature(f: WorkspaceFile): string {
  return `${f.size}:${f.mtimeMs}:${f.mode}:${f.link ?? ''}`
}
