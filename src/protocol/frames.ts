/**
 * JSON frames of the process WebSocket (`/runtime/v1/process`), as Watasu's runtime v1 defines
 * them. Output and stdin bytes travel as standard base64; `cursor` numbers output events from 0
 * across stdout and stderr, and `since=` on reconnect is inclusive.
 */

/** Largest WebSocket message either side accepts (a bigger one closes the socket with 1009). */
export const MAX_WS_FRAME = 16 * 1024 * 1024

export type ClientFrame =
  | {
      type: 'start'
      /** Optional caller-chosen stable id for the process. */
      id?: string
      cmd: string
      args?: string[]
      cwd?: string
      /** Ignored by local sandboxes: they have one unprivileged user. */
      user?: string
      environment?: Record<string, string>
      envs?: Record<string, string>
      stdin?: boolean
      /** Kill the process after this many ms; 0 or absent for no limit. */
      timeout_ms?: number | null
      pty?: { cols: number; rows: number }
      tag?: string
    }
  | { type: 'stdin'; data: string }
  | { type: 'close_stdin' }
  | { type: 'signal'; signal?: string; kill_group?: boolean }
  | { type: 'resize'; cols: number; rows: number }
  | { type: 'ping' }

export type ServerFrame =
  | { type: 'ready' }
  | { type: 'pong' }
  | { type: 'started'; pid: string }
  | { type: 'stdout' | 'stderr'; data: string; cursor: number }
  | { type: 'exit'; exit_code: number; error: string | null; signal?: string | null }
  | { type: 'stdin_ack'; pid: string }
  | { type: 'close_stdin_ack'; pid: string }
  | { type: 'error'; code: string; message: string }
