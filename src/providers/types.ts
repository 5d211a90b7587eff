/**
 * The one small interface every provider implements. Everything else (fleet, retries, packing,
 * templates, the agent link) is shared code above it, and depends on nothing else of a provider.
 */
import type { Socket } from 'node:net'

export interface CreateOptions {
  /** Template (snapshot) id to start from; omitted for the provider's base image. */
  template?: string
  /** Seconds the sandbox may live; the provider kills it after that (no leaks on a host crash). */
  timeoutSec: number
  /** Labels to find the sandbox by later (the run id, and the pool's own marker). */
  labels: Record<string, string>
  /** Let the sandbox reach the network. */
  network: boolean
  /**
   * Host node_modules folders the sandbox sees at their own paths, copy-on-write: nothing is
   * copied and nothing written reaches the host. Only where the session `sharesHost`.
   */
  hostLayers?: string[]
  /**
   * Folders (absolute) the sandbox's processes may read but not write, but for their cache
   * folders: the dependencies, so that no test file can change the code a later file's worker
   * runs. Where the provider can (the local engine); others ignore it.
   */
  readOnly?: string[]
}

/** Bytes, or a function that streams them (called again for a retry). */
export type Upload = Uint8Array | (() => AsyncIterable<Uint8Array>)

export interface ProcessSpec {
  cmd: string
  args?: string[]
  cwd?: string
  env?: Record<string, string>
  /** Keep stdin open for `write`. @default false */
  stdin?: boolean
}

export interface ProcessExit {
  /** The exit code; 128 + n (or the provider's own code) when a signal ended it. */
  exitCode: number
  /** Why it ended when it did not end by itself (killed, timed out, sandbox gone), else null. */
  error: string | null
  signal: string | null
}

/** A process in a sandbox: bytes both ways, in order, and how it ended. */
export interface ProviderProcess {
  /** Output as it arrives; every byte exactly once, in order per stream. */
  on(event: 'stdout' | 'stderr', listener: (chunk: Buffer) => void): unknown
  /**
   * Resolves once the process has been handed the bytes. Writes stay ordered and are never lost;
   * after a dropped connection a provider may hand a chunk over twice (it cannot know whether the
   * first copy arrived), so a process that must see each byte once numbers its input (the agent
   * link does).
   */
  write(data: Uint8Array): Promise<void>
  /** End of input: the process reads EOF. */
  closeStdin(): Promise<void>
  /** Settles once: resolves with the exit, rejects if the provider lost track of the process. */
  readonly exited: Promise<ProcessExit>
  /** Kill the process (and what it started) and stop listening to it. */
  kill(): void
}

/**
 * A socket inside the sandbox that reaches this process directly, past the process API: only where
 * the sandbox runs on this machine (the embedded engine). The agent link uses it to take workers'
 * messages off the relay.
 */
export interface DirectChannel {
  /** Its path inside the sandbox. */
  readonly path: string
  /** Each connection made to it, unauthenticated: the listener claims or destroys it. */
  on(event: 'connection', listener: (socket: Socket) => void): unknown
}

export interface ProviderSandbox {
  readonly id: string
  /** A direct channel to this process, where the provider has one. */
  readonly channel?: DirectChannel
  /**
   * Write a file inside the sandbox (parents created). A stream is given as a function that makes
   * it, so a failed upload can be sent again.
   */
  upload(path: string, body: Upload): Promise<void>
  /** Start a process with streaming stdio and an exit code; resolves once it runs. */
  start(spec: ProcessSpec): Promise<ProviderProcess>
  /** Start the sandbox's TTL again: it lives `seconds` more from now (renewed while a run goes on). */
  setTimeout(seconds: number): Promise<void>
  /** Freeze this sandbox's files into a reusable template; resolves with its id once usable. */
  snapshot(name: string): Promise<string>
  kill(): Promise<void>
  /**
   * Whether a limit of the sandbox (its memory) made the provider kill processes in it since the
   * last call: the reason, for the report of the file that was running. Asked after a kill.
   */
  limitHit?(): string | undefined
}

export interface SandboxSummary {
  id: string
  labels: Record<string, string>
  /** When it was created (ISO 8601), if the provider says. */
  createdAt?: string
}

export interface TemplateSummary {
  id: string
  name: string
  /** What it takes on the provider's disk, where the provider says. */
  sizeBytes?: number
  /** ISO 8601 times, where the provider says. */
  createdAt?: string
  lastUsedAt?: string
}

export interface ProviderSession {
  /**
   * What sandboxes start from without a template: the provider and its base image. Part of the
   * template key, so a new base image means a new template.
   */
  readonly base: string
  /**
   * Sandboxes run on this machine, with this machine's Node and platform, and can layer its
   * node_modules folders (`hostLayers`): the embedded local engine.
   */
  readonly sharesHost: boolean
  /**
   * Where the pool's sandbox runtime (agent, worker entry) already is inside every sandbox,
   * read-only; without it, the pool uploads the runtime with the workspace.
   */
  readonly runtimeDir?: string
  /**
   * Set where sandboxes cannot be cut off from the network: `network: false` is then not
   * enforced, so the pool refuses a run that keeps the network off, before anything is built.
   */
  readonly alwaysOnline?: true
  /** Why no template can be kept here, where none can: each sandbox then runs the template's steps itself. */
  readonly noTemplates?: string
  createSandbox(opts: CreateOptions): Promise<ProviderSandbox>
  /** The id of a template built earlier under this name, if the provider still has it. */
  findTemplate(name: string): Promise<string | undefined>
  /** Templates (snapshots) the provider holds, whoever made them. */
  listTemplates(): Promise<TemplateSummary[]>
  /** Delete a template; false if it was already gone. Rejects while a sandbox runs on it, where the provider knows. */
  deleteTemplate(id: string): Promise<boolean>
  /**
   * Hold the right to build the template `name` until the returned function is called: two runs
   * on this machine then build it once (the second waits, told through `onWait`, then finds it). Absent where builds
   * are coordinated through the provider's own listing instead.
   */
  lockTemplate?(name: string, onWait: () => void): Promise<() => Promise<void>>
  /** Live sandboxes that carry every given label. */
  listSandboxes(labels: Record<string, string>): Promise<SandboxSummary[]>
  /** Kill a sandbox by id; false if it was already gone. */
  killSandbox(id: string): Promise<boolean>
  close(): Promise<void>
}

export interface SandboxProvider {
  /** Shown in messages: "sandbox sbx_1 (local) was lost while running a.test.ts". */
  readonly name: string
  /**
   * Start or connect. Fails before any sandbox exists, with a clear message (a missing key names
   * its environment variable).
   */
  connect(): Promise<ProviderSession>
}

/** The label every sandbox the pool creates carries, so `vitest-sandbox reap` finds leaked ones. */
export const POOL_LABEL = 'vitest-sandbox'
/** The label naming the run a sandbox belongs to. */
export const RUN_LABEL = 'vitest-sandbox-run'
