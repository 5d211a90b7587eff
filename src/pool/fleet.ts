/**
 * The fleet of one Vitest run: the provider session, the template, the packed workspace, and up
 * to `sandboxes` sandboxes created lazily, each running one agent with `concurrency` worker
 * slots. Workers go to the least-loaded sandbox. Everything is killed when Vitest closes.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { ResolvedOptions } from './options.js'
import { AgentLink } from './agent-link.js'
import { RUNTIME_DIR } from './runtime-files.js'
import { renewTtl, runScript, STAGING } from '../providers/exec.js'
import { templateName } from '../template/key.js'
import { createProgress, type ProgressSink } from '../template/progress.js'
import { chooseSource, ensureTemplate, keyInputs, TEMPLATE_LABEL, type Template, type TemplateSpec } from '../template/template.js'
import { collectWorkspace, findWorkspaceRoot, listFiles, type Workspace, type WorkspaceFile } from '../workspace/collect.js'
import { packFiles } from '../workspace/pack.js'
import { POOL_LABEL, RUN_LABEL, type ProviderSandbox, type ProviderSession } from '../providers/types.js'
import { debug } from '../debug.js'

const log = debug('fleet')
const DEVALUE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.resolve('devalue'))), '..')
const RUNTIME_FILES = ['agent.js', 'worker.js', 'wire.js', 'codec.js']

export interface SandboxHost {
  sandbox: ProviderSandbox
  link: AgentLink
  /** Node version of the sandbox's agent (decides the codec). */
  node: string
  active: number
  /** Files this sandbox has run, for the summary. */
  files: number
}

export interface Lease {
  host: SandboxHost
  release(): void
}

export interface FleetLogger extends ProgressSink {
  error(text: string): void
}

export class Fleet {
  readonly runId = `vps-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`
  readonly providerName: string
  workspace!: Workspace
  private session?: ProviderSession
  private template?: Template
  /** What the dependencies were made from when the sandboxes started (watch mode compares it). */
  private dependencyKey?: string
  private tarFile?: string
  private initializing?: Promise<void>
  private readonly hosts: SandboxHost[] = []
  private creating = 0
  private readonly waiters: Array<() => void> = []
  private closed = false

  constructor(private readonly opts: ResolvedOptions, private readonly projectRoot: string, readonly logger: FleetLogger, private readonly outputs: string[] = []) {
    this.providerName = opts.provider.name
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
    this.session = await this.opts.provider.connect()
    await this.prepareTemplate()
    this.tarFile = path.join(await fsp.mkdtemp(path.join(os.tmpdir(), 'vitest-sandbox-')), 'workspace.tar')
    await pipeToFile(packFiles(root, this.workspace.files), this.tarFile)
    log('run %s: workspace %s (%d files, %d bytes), template %s (%s)', this.runId, root, this.workspace.files.length, this.workspace.bytes, this.template?.id ?? 'none', this.template?.source)
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

  /** A worker slot on the least-loaded sandbox, creating sandboxes up to the limit. */
  async lease(): Promise<Lease> {
    await this.init()
    for (;;) {
      if (this.closed) throw new Error('the sandbox pool is closed')
      const live = this.hosts.filter((h) => h.link.alive)
      const free = live.filter((h) => h.active < this.opts.concurrency).sort((a, b) => a.active - b.active)[0]
      // Prefer a new sandbox over stacking a second worker on a busy one, while there is room.
      if (live.length + this.creating < this.opts.sandboxes && (!free || free.active > 0)) {
        this.creating++
        try {
          const host = await this.startSandbox()
          this.hosts.push(host)
        } finally {
          this.creating--
        }
        continue
      }
      if (free) {
        free.active++
        free.files++
        let released = false
        return {
          host: free,
          release: () => {
            if (released) return
            released = true
            free.active--
            this.waiters.shift()?.()
          },
        }
      }
      await new Promise<void>((r) => this.waiters.push(r))
    }
  }

  private async startSandbox(): Promise<SandboxHost> {
    const root = this.workspace.root
    const { id: template, name, hostLayers } = this.template!
    const labels = { ...this.labels(), ...(name ? { [TEMPLATE_LABEL]: name } : {}) }
    const sandbox = await this.session!.createSandbox({ template, hostLayers, timeoutSec: this.opts.timeout, labels, network: this.opts.network === 'allow' })
    try {
      for (const f of RUNTIME_FILES) await sandbox.upload(`${STAGING}/${f}`, await fsp.readFile(path.join(RUNTIME_DIR, f)))
      await sandbox.upload(`${STAGING}/package.json`, Buffer.from('{"type":"module"}\n'))
      // devalue, for the codec of hosts and sandboxes on different Node majors.
      for (const f of await listFiles(DEVALUE_DIR, ['package.json', 'src/**'], [])) {
        await sandbox.upload(`${STAGING}/node_modules/devalue/${f.path}`, await fsp.readFile(path.join(DEVALUE_DIR, f.path)))
      }
      await sandbox.upload(`${STAGING}/workspace.tar`, () => fs.createReadStream(this.tarFile!))
      await runScript(sandbox, `mkdir -p '${root}' && tar -xf ${STAGING}/workspace.tar -C '${root}' && rm ${STAGING}/workspace.tar`, '/')
      const agent = await sandbox.start({ cmd: 'node', args: [`${STAGING}/agent.js`], cwd: root, stdin: true })
      const link = new AgentLink(agent)
      link.onLost = (reason) => {
        log('sandbox %s (%s) lost: %s', sandbox.id, this.providerName, reason)
        if (!this.closed) void sandbox.kill().catch(() => {})
      }
      const { node } = await link.hello
      log('sandbox %s ready (%s, node %s)', sandbox.id, this.providerName, node)
      renewTtl(sandbox, this.opts.timeout, () => !this.closed && link.alive)
      return { sandbox, link, node, active: 0, files: 0 }
    } catch (err) {
      await sandbox.kill().catch(() => {})
      throw new Error(`sandbox: could not start sandbox ${sandbox.id} (${this.providerName}): ${(err as Error).message}`)
    }
  }

  /**
   * Watch mode: before a rerun, send the warm sandboxes only what changed in the workspace since
   * the last upload (changed and new files as a tar, deleted files by name). Module code is always
   * fresh (it comes over RPC); this keeps files that tests read from disk fresh too.
   */
  async sync(): Promise<void> {
    if (!this.initializing || this.closed) return
    await this.init()
    if (this.currentDependencyKey() !== this.dependencyKey) return this.replaceSandboxes()
    const before = new Map(this.workspace.files.map((f) => [f.path, signature(f)]))
    const next = await this.collect(this.workspace.root)
    const changed = next.files.filter((f) => before.get(f.path) !== signature(f))
    const present = new Set(next.files.map((f) => f.path))
    const removed = [...before.keys()].filter((p) => !present.has(p))
    this.workspace = next
    if (!changed.length && !removed.length) return
    log('run %s: syncing changed %s and removed %s', this.runId, JSON.stringify(changed.slice(0, 50).map((f) => f.path)), JSON.stringify(removed.slice(0, 50)))
    await pipeToFile(packFiles(next.root, next.files), this.tarFile!) // for sandboxes created later
    const live = this.hosts.filter((h) => h.link.alive)
    const root = next.root
    await Promise.all(
      live.map(async (h) => {
        await h.sandbox.upload(`${STAGING}/delta.tar`, () => packFiles(root, changed))
        await h.sandbox.upload(`${STAGING}/removed.json`, Buffer.from(JSON.stringify(removed)))
        await runScript(
          h.sandbox,
          `tar -xf ${STAGING}/delta.tar -C '${root}' && node -e 'const fs=require("fs"),p=require("path");for(const f of JSON.parse(fs.readFileSync(process.argv[1],"utf8")))fs.rmSync(p.join(process.argv[2],f),{force:true})' ${STAGING}/removed.json '${root}' && rm ${STAGING}/delta.tar ${STAGING}/removed.json`,
          '/',
        )
      }),
    )
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
    await pipeToFile(packFiles(this.workspace.root, this.workspace.files), this.tarFile!)
    await killHosts(this.hosts.splice(0))
  }

  /** Kill every sandbox and close the provider session. Safe to call more than once. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    for (const w of this.waiters.splice(0)) w()
    await this.initializing?.catch(() => {})
    // Vitest closes its pool (stopping the last workers) at the same time as it calls onClose:
    // let those workers say goodbye before their sandboxes go.
    const deadline = Date.now() + 10_000
    while (this.hosts.some((h) => h.active > 0 && h.link.alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    if (this.hosts.length) {
      const each = this.hosts.map((h) => `${h.sandbox.id} ${h.files} file${h.files === 1 ? '' : 's'}${h.link.alive ? '' : ` (lost: ${h.link.lostReason})`}`)
      this.logger.log(`sandbox: ${this.hosts.length} sandbox${this.hosts.length === 1 ? '' : 'es'} (${this.providerName}): ${each.join(', ')}`)
    }
    await killHosts(this.hosts)
    await this.killLeftovers()
    await this.session?.close().catch(() => {})
    if (this.tarFile) await fsp.rm(path.dirname(this.tarFile), { recursive: true, force: true })
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
  return { root: workspace.root, setup: opts.setup, dependencies: opts.dependencies, installEnv: opts.installEnv, files: workspace.files }
}

function signature(f: WorkspaceFile): string {
  return `${f.size}:${f.mtimeMs}:${f.mode}:${f.link ?? ''}`
}

async function pipeToFile(source: AsyncIterable<Uint8Array>, file: string): Promise<void> {
  const out = fs.createWriteStream(file)
  for await (const chunk of source) if (!out.write(chunk)) await new Promise<void>((r) => out.once('drain', () => r()))
  await new Promise<void>((resolve, reject) => {
    out.once('error', reject)
    out.end(() => resolve())
  })
}
