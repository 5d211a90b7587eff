/**
 * A seccomp-BPF denylist for `bwrap --seccomp FD`, generated in plain JS so the engine needs no
 * native addon and no libseccomp. It blocks the syscalls untrusted test code has no business making
 * (debugging other processes, mounting, new namespaces, kernel keyrings, BPF, io_uring, ...) and
 * lets everything else through, so Node, child processes, worker threads and Vitest run unchanged.
 *
 * The program is the classic shape: check the architecture, load the syscall number, compare it
 * against each denied number, and return ERRNO or ALLOW. `clone` is allowed unless it asks for a
 * new user namespace; `ioctl` is allowed unless it pushes bytes into a terminal (TIOCSTI/TIOCLINUX).
 * Signals go anywhere in the sandbox except SIGUSR1: it opens Node's debugger in the process it
 * reaches, and a test that could open a sibling worker's (or the agent's) could rewrite its results.
 * Nor may a file descriptor's owner be sent SIGUSR1 by the kernel (`fcntl(F_SETSIG, SIGUSR1)`).
 */

const EPERM = 1
const ENOSYS = 38

const RET_ALLOW = 0x7fff0000
const RET_ERRNO = 0x00050000
const RET_KILL_PROCESS = 0x80000000

const LD_W_ABS = 0x20
const JEQ_K = 0x15
const JGE_K = 0x35
const JSET_K = 0x45
const RET_K = 0x06

const CLONE_NEWUSER = 0x10000000
const TIOCSTI = 0x5412
const TIOCLINUX = 0x541c
const X32_SYSCALL_BIT = 0x40000000
/** SIGUSR1, on every architecture with a table here. */
const SIGUSR1 = 10

// Offsets into struct seccomp_data { int nr; __u32 arch; __u64 ip; __u64 args[6]; } (little endian).
const OFF_NR = 0
const OFF_ARCH = 4
const OFF_ARG0_LO = 16
const OFF_ARG1_LO = 24
const OFF_ARG2_LO = 32
/** fcntl's command that picks the signal sent to a descriptor's owner (F_SETOWN) on I/O. */
const F_SETSIG = 10

interface ArchTable {
  audit: number
  /** Syscalls answered with EPERM. */
  denied: Record<string, number>
  /** Syscalls answered with ENOSYS, so glibc and libuv fall back to older calls. */
  unsupported: Record<string, number>
  clone: number
  ioctl: number
  /** Syscalls that send a signal, by the argument that holds it. */
  signals: { arg1: number[]; arg2: number[] }
  fcntl: number
  /** x86_64 also accepts x32-ABI numbers (bit 30 set); they are refused outright. */
  x32: boolean
}

const X86_64: ArchTable = {
  audit: 0xc000003e,
  x32: true,
  clone: 56,
  ioctl: 16,
  // kill, tkill, rt_sigqueueinfo, pidfd_send_signal; tgkill, rt_tgsigqueueinfo
  signals: { arg1: [62, 200, 129, 424], arg2: [234, 297] },
  fcntl: 72,
  unsupported: { clone3: 435, io_uring_setup: 425, io_uring_enter: 426, io_uring_register: 427 },
  denied: {
    ptrace: 101, process_vm_readv: 310, process_vm_writev: 311, pidfd_getfd: 438,
    mount: 165, umount2: 166, pivot_root: 155, chroot: 161, open_tree: 428, move_mount: 429,
    fsopen: 430, fsconfig: 431, fsmount: 432, fspick: 433, mount_setattr: 442,
    unshare: 272, setns: 308,
    keyctl: 250, add_key: 248, request_key: 249,
    bpf: 321, perf_event_open: 298, userfaultfd: 323,
    kexec_load: 246, kexec_file_load: 320, init_module: 175, finit_module: 313, delete_module: 176,
    open_by_handle_at: 304, name_to_handle_at: 303,
    acct: 163, swapon: 167, swapoff: 168, reboot: 169, sethostname: 170, setdomainname: 171,
    iopl: 172, ioperm: 173, quotactl: 179, syslog: 103, vhangup: 153,
    settimeofday: 164, clock_settime: 227, adjtimex: 159, clock_adjtime: 305,
  },
}

const AARCH64: ArchTable = {
  audit: 0xc00000b7,
  x32: false,
  clone: 220,
  ioctl: 29,
  signals: { arg1: [129, 130, 138, 424], arg2: [131, 240] },
  fcntl: 25,
  unsupported: { clone3: 435, io_uring_setup: 425, io_uring_enter: 426, io_uring_register: 427 },
  denied: {
    ptrace: 117, process_vm_readv: 270, process_vm_writev: 271, pidfd_getfd: 438,
    mount: 40, umount2: 39, pivot_root: 41, chroot: 51, open_tree: 428, move_mount: 429,
    fsopen: 430, fsconfig: 431, fsmount: 432, fspick: 433, mount_setattr: 442,
    unshare: 97, setns: 268,
    keyctl: 219, add_key: 217, request_key: 218,
    bpf: 280, perf_event_open: 241, userfaultfd: 282,
    kexec_load: 104, kexec_file_load: 294, init_module: 105, finit_module: 273, delete_module: 106,
    open_by_handle_at: 265, name_to_handle_at: 264,
    acct: 89, swapon: 224, swapoff: 225, reboot: 142, sethostname: 161, setdomainname: 162,
    syslog: 116, vhangup: 58, settimeofday: 170, clock_settime: 112, adjtimex: 171, clock_adjtime: 266,
  },
}

const TABLES: Record<string, ArchTable> = { x64: X86_64, arm64: AARCH64 }

/** The syscall names the filter refuses, for `doctor` and the docs. */
export function deniedSyscalls(arch = process.arch): string[] {
  const table = TABLES[arch]
  return table ? [...Object.keys(table.denied), ...Object.keys(table.unsupported)] : []
}

type Insn = [code: number, jt: number, jf: number, k: number]

/**
 * Build the filter for `arch` (a `process.arch` value). Throws for architectures without a table,
 * so the engine refuses to start rather than run without a filter.
 */
export function buildSeccompFilter(arch: string = process.arch): Buffer {
  const table = TABLES[arch]
  if (!table) throw new Error(`seccomp: no syscall table for architecture '${arch}' (supported: ${Object.keys(TABLES).join(', ')})`)

  // Each check is "if nr == N goto <its return>"; returns are appended after the checks, and jump
  // offsets are patched once the layout is known (BPF jumps are relative and forward only).
  const checks: Array<{ nr: number; target: 'eperm' | 'enosys' | 'clone' | 'ioctl' | 'sig1' | 'sig2' | 'fcntl' }> = [
    ...Object.values(table.denied).map((nr) => ({ nr, target: 'eperm' as const })),
    ...Object.values(table.unsupported).map((nr) => ({ nr, target: 'enosys' as const })),
    { nr: table.clone, target: 'clone' as const },
    { nr: table.ioctl, target: 'ioctl' as const },
    ...table.signals.arg1.map((nr) => ({ nr, target: 'sig1' as const })),
    ...table.signals.arg2.map((nr) => ({ nr, target: 'sig2' as const })),
    { nr: table.fcntl, target: 'fcntl' as const },
  ]

  const prog: Insn[] = []
  prog.push([LD_W_ABS, 0, 0, OFF_ARCH])
  prog.push([JEQ_K, 1, 0, table.audit])
  prog.push([RET_K, 0, 0, RET_KILL_PROCESS])
  prog.push([LD_W_ABS, 0, 0, OFF_NR])
  if (table.x32) {
    prog.push([JGE_K, 0, 1, X32_SYSCALL_BIT])
    prog.push([RET_K, 0, 0, RET_ERRNO | EPERM])
  }
  const checkStart = prog.length
  for (const c of checks) prog.push([JEQ_K, 0, 0, c.nr])
  // Fall-through after all checks: allow.
  prog.push([RET_K, 0, 0, RET_ALLOW])
  const labels: Record<string, number> = {}
  labels.eperm = prog.length
  prog.push([RET_K, 0, 0, RET_ERRNO | EPERM])
  labels.enosys = prog.length
  prog.push([RET_K, 0, 0, RET_ERRNO | ENOSYS])
  labels.clone = prog.length
  prog.push([LD_W_ABS, 0, 0, OFF_ARG0_LO])
  prog.push([JSET_K, 0, 1, CLONE_NEWUSER])
  prog.push([RET_K, 0, 0, RET_ERRNO | EPERM])
  prog.push([RET_K, 0, 0, RET_ALLOW])
  labels.ioctl = prog.length
  prog.push([LD_W_ABS, 0, 0, OFF_ARG1_LO])
  prog.push([JEQ_K, 2, 0, TIOCSTI])
  prog.push([JEQ_K, 1, 0, TIOCLINUX])
  prog.push([RET_K, 0, 0, RET_ALLOW])
  prog.push([RET_K, 0, 0, RET_ERRNO | EPERM])
  // fcntl(fd, F_SETSIG, SIGUSR1): refused; any other command or signal allowed.
  labels.fcntl = prog.length
  prog.push([LD_W_ABS, 0, 0, OFF_ARG1_LO])
  prog.push([JEQ_K, 0, 2, F_SETSIG])
  prog.push([LD_W_ABS, 0, 0, OFF_ARG2_LO])
  prog.push([JEQ_K, 1, 0, SIGUSR1])
  prog.push([RET_K, 0, 0, RET_ALLOW])
  prog.push([RET_K, 0, 0, RET_ERRNO | EPERM])
  for (const [label, offset] of [['sig1', OFF_ARG1_LO], ['sig2', OFF_ARG2_LO]] as const) {
    labels[label] = prog.length
    prog.push([LD_W_ABS, 0, 0, offset])
    prog.push([JEQ_K, 1, 0, SIGUSR1])
    prog.push([RET_K, 0, 0, RET_ALLOW])
    prog.push([RET_K, 0, 0, RET_ERRNO | EPERM])
  }

  checks.forEach((c, i) => {
    const at = checkStart + i
    const jt = labels[c.target] - at - 1
    if (jt > 255) throw new Error('seccomp: filter too long for 8-bit jump offsets')
    prog[at][1] = jt
  })

  const buf = Buffer.alloc(prog.length * 8)
  prog.forEach(([code, jt, jf, k], i) => {
    buf.writeUInt16LE(code, i * 8)
    buf.writeUInt8(jt, i * 8 + 2)
    buf.writeUInt8(jf, i * 8 + 3)
    buf.writeUInt32LE(k >>> 0, i * 8 + 4)
  })
  return buf
}
