/**
 * The one small interface every provider implements. Everything else (fleet, retries, packing,
 * templates, the agent link) is shared code above it.
 */
import type { RemoteProcess, StartOptions } from '../protocol/client.js'

export interface CreateOptions {
  /** Template (snapshot) id to start from; omitted for the provider's base image. */
  template?: string
  /** Seconds the sandbox may live; the provider kills it after that (no leaks on a host crash). */
  timeoutSec: number
  /** Labels to find the sandbox by later (e.g. the run id). */
  labels: Record<string, string>
  /** Let the sandbox reach the network. */
  network: boolean
}

export interface ProviderSandbox {
  readonly id: string
  /** Write a file inside the sandbox (parents created). */
  upload(path: string, body: AsyncIterable<Uint8Array> | Uint8Array): Promise<void>
  /** Start a process with streaming stdio and an exit code. */
  start(opts: StartOptions): Promise<RemoteProcess>
  /** Start the sandbox's TTL again: it lives `seconds` more from now (renewed while a run goes on). */
  setTimeout(seconds: number): Promise<void>
  /** Freeze this sandbox's files into a reusable template; returns its id. */
  snapshot(name: string): Promise<string>
  kill(): Promise<void>
}

export interface ProviderSession {
  createSandbox(opts: CreateOptions): Promise<ProviderSandbox>
  /** The id of a template built earlier under this name, if the provider still has it. */
  findTemplate(name: string): Promise<string | undefined>
  close(): Promise<void>
}

export interface SandboxProvider {
  /** Shown in messages: "sandbox sbx_1 (local) was lost while running a.test.ts". */
  readonly name: string
  /** Start or connect; fails with a clear message (missing key: the variable's name). */
  connect(): Promise<ProviderSession>
}
