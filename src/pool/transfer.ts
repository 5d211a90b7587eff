/**
 * What crosses from the host into a sandbox: the bundle a new sandbox gets (the pool's runtime
 * under STAGING and the workspace at its own absolute root, in one tar, unpacked by the process
 * that becomes the agent) and, in watch mode, the delta of changed and removed files.
 */
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { RUNTIME_DIR } from './runtime-files.js'
import { runScript, singleQuoted, STAGING } from '../providers/exec.js'
import type { ProviderProcess, ProviderSandbox } from '../providers/types.js'
import { listFiles, type Workspace, type WorkspaceFile } from '../workspace/collect.js'
import { packFiles, packTrees } from '../workspace/pack.js'

const DEVALUE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.resolve('devalue'))), '..')
export const RUNTIME_FILES = ['agent.js', 'worker.js', 'wire.js', 'codec.js', 'module-cache.js', 'host-reads.js', 'own-modules.js', 'tunnels.js']

/** The bundle of the workspace as last packed; a new one replaces it for sandboxes created later. */
export class Bundles {
  private dir?: string
  private latest?: Promise<string>

  /** Pack `workspace` (in the background: `current()` waits for it). */
  pack(workspace: Workspace, inFlight: () => boolean): void {
    const previous = this.latest
    this.latest = this.write(workspace)
    this.latest.catch(() => {}) // awaited by each sandbox's start
    // A sandbox still uploading the previous file keeps reading it: it goes only when none can.
    void Promise.all([previous, this.latest]).then(async ([old]) => {
      if (old && !inFlight()) await fsp.rm(old, { force: true })
    }, () => {})
  }

  current(): Promise<string> {
    if (!this.latest) throw new Error('vitest-pool-sandbox: the bundle was asked for before it was packed')
    return this.latest
  }

  async dispose(): Promise<void> {
    await this.latest?.catch(() => {})
    if (this.dir) await fsp.rm(this.dir, { recursive: true, force: true })
  }

  private async write(workspace: Workspace): Promise<string> {
    const dir = (this.dir ??= await fsp.mkdtemp(path.join(os.tmpdir(), 'vitest-sandbox-')))
    const file = path.join(dir, `bundle-${Date.now()}-${Math.random().toString(36).slice(2)}.tar`)
    const staging = STAGING.slice(1)
    await fsp.writeFile(path.join(dir, 'package.json'), '{"type":"module"}\n')
    await pipeToFile(
      packTrees([
        { root: RUNTIME_DIR, files: await listFiles(RUNTIME_DIR, RUNTIME_FILES, []), prefix: staging },
        { root: dir, files: await listFiles(dir, ['package.json'], []), prefix: staging },
        // devalue, for the codec of hosts and sandboxes on different Node majors.
        { root: DEVALUE_DIR, files: await listFiles(DEVALUE_DIR, ['package.json', 'src/**'], []), prefix: `${staging}/node_modules/devalue` },
        { root: workspace.root, files: workspace.files, prefix: workspace.root.slice(1) },
      ]),
      file,
    )
    return file
  }
}

/**
 * Upload the bundle and start the agent: one process unpacks it and becomes the agent, no round
 * trip in between. The agent runs from `runtimeDir` (the provider's read-only copy of the runtime,
 * which no test can rewrite) where there is one, else from the bundle's (packed before the
 * provider answered).
 */
export async function startAgent(sandbox: ProviderSandbox, bundle: string, root: string, runtimeDir = STAGING): Promise<ProviderProcess> {
  await sandbox.upload(`${STAGING}/bundle.tar`, () => fs.createReadStream(bundle))
  return sandbox.start({
    cmd: '/bin/sh',
    args: ['-c', `tar -xf ${STAGING}/bundle.tar -C / && rm ${STAGING}/bundle.tar && cd ${singleQuoted(root)} && exec node ${runtimeDir}/agent.js`],
    cwd: '/',
    stdin: true,
  })
}

/** Watch mode: the changed files as a tar, the removed ones by name, applied under `root`. */
export async function syncDelta(sandbox: ProviderSandbox, root: string, changed: WorkspaceFile[], removed: string[]): Promise<void> {
  await sandbox.upload(`${STAGING}/delta.tar`, () => packFiles(root, changed))
  await sandbox.upload(`${STAGING}/removed.json`, Buffer.from(JSON.stringify(removed)))
  const remove = `node -e 'const fs=require("fs"),p=require("path");for(const f of JSON.parse(fs.readFileSync(process.argv[1],"utf8")))fs.rmSync(p.join(process.argv[2],f),{force:true})' ${STAGING}/removed.json ${singleQuoted(root)}`
  await runScript(sandbox, `tar -xf ${STAGING}/delta.tar -C ${singleQuoted(root)} && ${remove} && rm ${STAGING}/delta.tar ${STAGING}/removed.json`, '/')
}

async function pipeToFile(source: AsyncIterable<Uint8Array>, file: string): Promise<void> {
  const out = fs.createWriteStream(file)
  for await (const chunk of source) if (!out.write(chunk)) await new Promise<void>((r) => out.once('drain', () => r()))
  await new Promise<void>((resolve, reject) => {
    out.once('error', reject)
    out.end(() => resolve())
  })
}
