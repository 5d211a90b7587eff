/**
 * A byte link that survives a dropped output stream, for process APIs whose reattach gives only
 * the output written from then on (E2B's envd: `Connect` forks the live output, and what the
 * process writes while no client listens is gone). A relay runs the process and keeps what it
 * wrote until the host acknowledges it; after a reattach the host asks for everything from the
 * position it has, and the relay sends it again behind a marker the host waits for.
 *
 * Both ways, frames are `[kind 1 byte][position 6 bytes BE][length 4 bytes BE][data]`:
 *
 * - relay → host: O (stdout), E (stderr), X (the exit, as JSON); the position is the frame's own
 *   start in the relay's output, so the host checks that nothing is missing or repeated.
 * - host → relay: I (input at that input position: a part the relay has is skipped, so a retried
 *   call does no harm), C (end of input after that many bytes), K (kill the process group),
 *   A (output taken up to that position: the relay may forget it), S (send again from that
 *   position, behind `MARK` + the frame's data, a nonce fresh for each reattach).
 *
 * The relay ends its process's group when asked to stop (SIGTERM, SIGINT, SIGHUP). After the exit
 * it waits, at most a minute, for the host to take its X frame, then exits with its process's
 * status (128 + the signal's number for a signal), so that envd's end event still tells it.
 */
import { randomBytes } from 'node:crypto'

/** The relay, run as `node -e RELAY <spec JSON>` (the environment is the process's own). */
export const RELAY = `
const {spawn}=require("child_process");
const s=JSON.parse(process.argv[1]);
const H=11,MARK=Buffer.from("\\0vsync");
const frame=(k,p,b)=>{const h=Buffer.alloc(H);h[0]=k;h.writeUIntBE(p,1,6);h.writeUInt32BE(b.length,7);return Buffer.concat([h,b])};
let log=[],start=0,end=0,done=false,nonce="",c,status=0;
const out=(k,b)=>{const f=frame(k,end,b);log.push(f);end+=f.length;process.stdout.write(f)};
const leave=()=>process.stdout.write("",()=>process.exit(status));
const killGroup=()=>{if(c&&c.pid>0)try{process.kill(-c.pid,"SIGKILL")}catch{}};
const finish=(r)=>{if(done)return;done=true;status=r.signal?128+(require("os").constants.signals[r.signal]||1):r.code??0;out(88,Buffer.from(JSON.stringify(r)));setTimeout(leave,s.linger)};
for(const [sig,n] of [["SIGHUP",1],["SIGTERM",15],["SIGINT",2]])process.on(sig,()=>{killGroup();process.exit(128+n)});
try{c=spawn(s.cmd,s.args,{stdio:["pipe","pipe","pipe"],detached:true})}catch(e){c={pid:0};finish({code:127,signal:null,error:e.message})}
if(c.on){
c.on("error",(e)=>finish({code:127,signal:null,error:e.message}));
c.stdin.on("error",()=>{});if(!s.stdin)c.stdin.end();
c.stdout.on("data",(b)=>out(79,b));c.stderr.on("data",(b)=>out(69,b));
c.on("close",(code,signal)=>finish({code,signal}));
}
let taken=0,eof=false,input=Buffer.alloc(0);
const take=(k,p,b)=>{
if(k===73){if(c.stdin&&!eof&&p<=taken&&p+b.length>taken){c.stdin.write(b.subarray(taken-p));taken=p+b.length}}
else if(k===67){if(c.stdin&&!eof&&p===taken){eof=true;c.stdin.end()}}
else if(k===75)killGroup();
else if(k===65){while(log.length&&start+log[0].length<=p){start+=log[0].length;log.shift()}if(done&&p>=end)leave()}
else if(k===83){const n=b.toString("hex");if(n===nonce)return;nonce=n;process.stdout.write(Buffer.concat([MARK,b,Buffer.concat(log).subarray(Math.max(0,p-start))]))}};
process.stdin.on("data",(d)=>{input=input.length?Buffer.concat([input,d]):d;
while(input.length>=H){const n=input.readUInt32BE(7);if(input.length<H+n)break;take(input[0],input.readUIntBE(1,6),input.subarray(H,H+n));input=input.subarray(H+n)}});
`

const HEAD = 11
const MARK = Buffer.from('\0vsync')
/** Largest frame the host takes: code in the sandbox could write a header claiming gigabytes. */
export const MAX_FRAME = 16 * 1024 * 1024

export const KIND = { stdout: 79, stderr: 69, exit: 88, input: 73, close: 67, kill: 75, ack: 65, resend: 83 } as const

/** One frame, as both sides write them. */
export function relayFrame(kind: number, position: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(HEAD)
  head[0] = kind
  head.writeUIntBE(position, 1, 6)
  head.writeUInt32BE(data.length, 7)
  return Buffer.concat([head, data])
}

/** How long the relay keeps its exit report for a host that has not taken it. */
const LINGER_MS = 60_000

/**
 * The relay's arguments for a process: what it spawns (its environment is the relay's own), and
 * how long it waits after the exit for the host (`lingerMs`, shorter only in tests).
 */
export function relayArgs(spec: { cmd: string; args?: string[]; stdin?: boolean }, lingerMs = LINGER_MS): string[] {
  return ['-e', RELAY, JSON.stringify({ cmd: spec.cmd, args: spec.args ?? [], stdin: spec.stdin ?? false, linger: lingerMs })]
}

/**
 * The host's reader of the relay's output: whole frames in order, whatever the chunking. After
 * `resync()` it skips everything up to the marker with the new nonce, where the relay's resend
 * starts at `position`.
 */
export class RelayReader {
  /** The relay's output taken so far, in whole frames. */
  position = 0
  /** Chunks not yet read, joined only once the frame they start is whole (joining at every chunk is quadratic). */
  private pending: Buffer[] = []
  private size = 0
  private need = HEAD
  private marker?: Buffer

  constructor(private readonly onFrame: (kind: number, data: Buffer) => void) {}

  /** Wait for a resend: returns the nonce the S frame carries. */
  resync(): Buffer {
    const nonce = randomBytes(16)
    this.marker = Buffer.concat([MARK, nonce])
    this.pending = []
    this.size = 0
    this.need = HEAD
    return nonce
  }

  push(chunk: Buffer): void {
    this.pending.push(chunk)
    this.size += chunk.length
    if (!this.marker && this.size < this.need) return
    let buf = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending)
    if (this.marker) {
      const at = buf.indexOf(this.marker)
      // What precedes the marker is live output the resend repeats; keep only a marker's length.
      if (at < 0) return this.keep(buf.subarray(Math.max(0, buf.length - this.marker.length + 1)))
      buf = buf.subarray(at + this.marker.length)
      this.marker = undefined
    }
    this.need = HEAD
    while (buf.length >= HEAD) {
      const at = buf.readUIntBE(1, 6)
      const length = buf.readUInt32BE(7)
      if (at !== this.position) throw new Error(`the relay sent output at ${at}, expected ${this.position}`)
      if (length > MAX_FRAME) throw new Error(`the relay sent a frame of ${length} bytes, over the limit of ${MAX_FRAME}`)
      if (buf.length < HEAD + length) {
        this.need = HEAD + length
        break
      }
      const kind = buf[0]
      const data = buf.subarray(HEAD, HEAD + length)
      buf = buf.subarray(HEAD + length)
      this.position += HEAD + length
      this.onFrame(kind, data)
    }
    this.keep(buf)
  }

  private keep(rest: Buffer): void {
    this.pending = rest.length ? [rest] : []
    this.size = rest.length
  }
}
