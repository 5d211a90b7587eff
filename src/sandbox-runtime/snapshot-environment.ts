/**
 * Snapshot environment used inside sandboxes (set as `snapshotEnvironment` by the pool). Vitest
 * loads it in the worker; every snapshot read, write and removal goes to the host over the
 * worker's private channel, so `vitest -u`, inline snapshots and `toMatchFileSnapshot` change
 * files on the host and nowhere else. Path resolution is Vitest's own (`resolveSnapshotPath` RPC).
 */
import { VitestSnapshotEnvironment } from 'vitest/runtime'

type HostCall = (op: string, ...args: unknown[]) => Promise<unknown>
const call = (process as unknown as Record<symbol, HostCall>)[Symbol.for('vitest-pool-sandbox.host-call')]

// Folders are made on the host with the file written into them (Vitest makes none otherwise).
class HostSnapshotEnvironment extends VitestSnapshotEnvironment {
  override async saveSnapshotFile(file: string, snapshot: string): Promise<void> {
    await call('snapshot:write', file, snapshot)
  }

  override async readSnapshotFile(file: string): Promise<string | null> {
    return (await call('snapshot:read', file)) as string | null
  }

  override async removeSnapshotFile(file: string): Promise<void> {
    await call('snapshot:remove', file)
  }
}

export default new HostSnapshotEnvironment()
