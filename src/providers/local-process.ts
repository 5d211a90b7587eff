/**
 * A process of the embedded engine, reached in this process: the engine's own process object,
 * without the protocol server's WebSocket, JSON, base64 and per-write acks in between (on the agent
 * link every RPC of every test worker crosses it twice).
 */
import { EventEmitter } from 'node:events'
import type { Engine } from '../engine/engine.js'
import type { OutputEvent, SandboxProcess } from '../engine/process.js'
import { earlyEvents } from './early-events.js'
import type { ProcessExit, ProcessSpec, ProviderProcess } from './types.js'

class LocalProcess extends EventEmitter<{ stdout: [Buffer]; stderr: [Buffer] }> implements ProviderProcess {
  readonly exited: Promise<ProcessExit>

  constructor(private readonly proc: SandboxProcess) {
    super()
    const early = earlyEvents()
    const emit = (e: OutputEvent) => early.deliver(() => this.emit(e.type, e.data))
    for (const e of proc.eventsSince(0)) emit(e)
    proc.on('output', emit)
    // Through the same queue as the output: a caller that awaits the exit has every byte before it.
    this.exited = new Promise((resolve) => {
      const done = () => resolve({ exitCode: proc.exit!.exitCode, error: proc.exit!.error ?? null, signal: proc.exit!.signal })
      if (proc.exit) early.deliver(done)
      else proc.once('exit', () => early.deliver(done))
    })
    early.release()
  }

  write(data: Uint8Array): Promise<void> {
    return this.proc.write(Buffer.from(data.buffer, data.byteOffset, data.byteLength))
  }

  async closeStdin(): Promise<void> {
    this.proc.closeStdin()
  }

  kill(): void {
    this.proc.kill('SIGKILL', true)
  }
}

/** Start `spec` in the engine's sandbox `sandboxId`, as the protocol server would. */
export async function startLocalProcess(engine: Engine, sandboxId: string, spec: ProcessSpec): Promise<ProviderProcess> {
  const sandbox = engine.get(sandboxId)
  if (!sandbox) throw new Error(`sandbox ${sandboxId} not found`)
  const proc = await sandbox.spawn({ cmd: spec.cmd, args: spec.args ?? [], cwd: spec.cwd, env: spec.env ?? {}, stdin: spec.stdin ?? false })
  return new LocalProcess(proc)
}
