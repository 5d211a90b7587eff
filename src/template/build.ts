/**
 * Building a template in a sandbox, step by step: the workspace goes in (setup commands and
 * install scripts may need it), then the dependencies (installed by the lockfile's package
 * manager, or copied from the host, or already there as host layers), then `template.setup`;
 * then the workspace files come out again, so the template holds only what those steps made, and
 * the sandbox is snapshotted. Registry credentials reach the install step only.
 */
import fs from 'node:fs'
import path from 'node:path'
import fg from 'fast-glob'
import { listFiles, type WorkspaceFile } from '../workspace/collect.js'
import { NEVER } from '../workspace/given.js'
import { packFiles } from '../workspace/pack.js'
import { renewTtl, runScript, singleQuoted as q, STAGING } from '../providers/exec.js'
import type { ProviderSandbox, ProviderSession } from '../providers/types.js'
import type { DependencySource } from './key.js'
import { INSTALL_CONFIG, type PackageManager } from './package-manager.js'
import type { TemplateProgress } from './progress.js'

/** Seconds a template builder lives unless renewed (it is, every third of that, while it builds). */
const BUILDER_TTL = 600

/** Inside node_modules, caches that must not be frozen into a template. */
const CACHE_DIRS = ['**/node_modules/.vite/**', '**/node_modules/.vitest/**', '**/node_modules/.cache/**', '**/node_modules/.vitest-cache/**', '**/node_modules/.experimental-vitest-cache/**']

/** Package manager caches and stores, kept out of the template (the install's own files stay). */
const CACHE = `${STAGING}/install-cache`
const INSTALL_ENV: Record<string, string> = {
  CI: 'true',
  npm_config_cache: `${CACHE}/npm`,
  npm_config_store_dir: `${CACHE}/pnpm-store`,
  npm_config_update_notifier: 'false',
  npm_config_fund: 'false',
  npm_config_audit: 'false',
  XDG_CACHE_HOME: `${CACHE}/xdg-cache`,
  XDG_DATA_HOME: `${CACHE}/xdg-data`,
  YARN_CACHE_FOLDER: `${CACHE}/yarn`,
  YARN_GLOBAL_FOLDER: `${CACHE}/yarn-berry`,
  YARN_ENABLE_TELEMETRY: '0',
  BUN_INSTALL_CACHE_DIR: `${CACHE}/bun`,
}

export interface BuildPlan {
  name: string
  root: string
  source: DependencySource
  setup: string[]
  /** The workspace files the sandboxes get (the builder gets them too). */
  files: WorkspaceFile[]
  hostLayers: string[]
  packageManager?: PackageManager
  /** Host variables (registry credentials) for the install step only. */
  installEnv: Record<string, string>
  labels: Record<string, string>
}

/** Removes the listed files (relative to the root), then the folders they leave empty. */
const REMOVE_LISTED =
  'const fs=require("fs"),p=require("path");const [list,root]=process.argv.slice(1);const dirs=new Set();' +
  'for(const f of JSON.parse(fs.readFileSync(list,"utf8"))){fs.rmSync(p.join(root,f),{force:true});for(let d=p.dirname(f);d!==".";d=p.dirname(d))dirs.add(d)}' +
  'for(const d of [...dirs].sort((a,b)=>b.length-a.length)){try{fs.rmdirSync(p.join(root,d))}catch{}}'

/** Create the builder; the caller decides whether to go on (another run may be building it). */
export function createBuilder(session: ProviderSession, plan: BuildPlan): Promise<ProviderSandbox> {
  return session.createSandbox({
    timeoutSec: BUILDER_TTL,
    labels: plan.labels,
    network: plan.source === 'install' || plan.setup.length > 0,
    hostLayers: plan.hostLayers,
  })
}

/**
 * Runs build steps with a deadline: past `timeoutSec` the sandbox they run in is killed and the
 * error names the step that was running (a hung `npm ci` or setup command must not hold a run,
 * and every other run waiting for this template, for ever).
 */
export async function withinTimeout<T>(steps: (progress: TemplateProgress) => Promise<T>, progress: TemplateProgress, timeoutSec: number, sandbox: ProviderSandbox): Promise<T> {
  let current = 'starting'
  const tracked: TemplateProgress = {
    step: (text) => progress.step((current = text)),
    output: (chunk) => progress.output(chunk),
    end: (text) => progress.end(text),
  }
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      void sandbox.kill().catch(() => {})
      reject(new Error(`the build took longer than template.timeout (${timeoutSec} s) and was stopped while ${current}. Make that step finish (a command waiting for input or a server that never exits hangs it), or raise template.timeout`))
    }, timeoutSec * 1000)
  })
  const work = steps(tracked)
  work.catch(() => {}) // what a killed sandbox makes of the steps, once the deadline has answered
  try {
    return await Promise.race([work, deadline])
  } finally {
    clearTimeout(timer)
  }
}

/** Run the build in `builder`; resolves with the template id. The caller kills the builder. */
export async function buildIn(builder: ProviderSandbox, plan: BuildPlan, progress: TemplateProgress): Promise<string> {
  const stopRenewing = renewTtl(builder, BUILDER_TTL)
  try {
    await installIn(builder, plan, progress)
    progress.step('removing the workspace files (sandboxes get fresh ones)')
    await runScript(builder, `node -e ${q(REMOVE_LISTED)} ${STAGING}/uploaded.json ${q(plan.root)} && rm -rf ${STAGING}`, '/', { label: 'removing the workspace files', onOutput: (b) => progress.output(b) })
    progress.step('snapshotting')
    return await builder.snapshot(plan.name)
  } finally {
    stopRenewing()
  }
}

/**
 * The build's steps up to the snapshot: the workspace, the dependencies, the setup commands. Also
 * what each sandbox runs itself where the provider keeps no templates.
 */
export async function installIn(builder: ProviderSandbox, plan: BuildPlan, progress: TemplateProgress): Promise<void> {
  const { root } = plan
  const run = (script: string, opts: { env?: Record<string, string>; label?: string; cwd?: string } = {}) =>
    runScript(builder, script, opts.cwd ?? root, { ...opts, onOutput: (b) => progress.output(b) })

  const config = plan.source === 'install' ? await installConfigFiles(root) : []
  const uploaded = [...plan.files, ...config]
  progress.step(`uploading the workspace (${plan.files.length} files)`)
  await builder.upload(`${STAGING}/workspace.tar`, () => packFiles(root, uploaded))
  await builder.upload(`${STAGING}/uploaded.json`, Buffer.from(JSON.stringify(uploaded.map((f) => f.path))))
  await run(`mkdir -p ${q(root)} && tar -xf ${STAGING}/workspace.tar -C ${q(root)} && rm ${STAGING}/workspace.tar`, { cwd: '/', label: 'unpacking the workspace' })

  if (plan.source === 'copy') {
    const deps = await listFiles(root, ['**/node_modules/**'], CACHE_DIRS)
    progress.step(`copying ${deps.length} dependency files from the host`)
    await builder.upload(`${STAGING}/deps.tar`, () => packFiles(root, deps))
    await run(`tar -xf ${STAGING}/deps.tar -C ${q(root)} && rm ${STAGING}/deps.tar`, { cwd: '/', label: 'unpacking the dependencies' })
  }
  if (plan.source === 'install') {
    const pm = plan.packageManager!
    progress.step(`installing with ${pm.name} ${pm.version} (${pm.install})`)
    await run(pm.install, { env: { ...INSTALL_ENV, ...plan.installEnv }, label: pm.install })
    // Registry configuration (it may hold tokens) and caches never reach setup or the template.
    // (A failed install leaves them in a builder that is killed, and caches nothing.)
    await run(`rm -rf ${CACHE} ${config.map((f) => q(f.path)).join(' ')}`, { label: 'removing the install configuration' })
  }
  for (const command of plan.setup) {
    progress.step(`running ${JSON.stringify(command)}`)
    await run(command, { label: command })
  }
}

/** npm's and Yarn's credential keys, with a value written out (not `${VAR}`). */
const LITERAL_CREDENTIAL = /^\s*(?:\S*:)?(?:_authToken|_auth|_password|npmAuthToken|npmAuthIdent)\s*[=:]\s*["']?(?!\$\{)[^\s"']+/m

/** The workspace's package manager configuration files that hold a credential in clear. */
export async function filesWithLiteralCredentials(root: string): Promise<string[]> {
  const files = await installConfigFiles(root)
  return files.filter((f) => LITERAL_CREDENTIAL.test(fs.readFileSync(path.join(root, f.path), 'utf8'))).map((f) => f.path)
}

/** The package manager's configuration files of the workspace (secrets to test sandboxes). */
async function installConfigFiles(root: string): Promise<WorkspaceFile[]> {
  const names = await fg(INSTALL_CONFIG.map((n) => `**/${n}`), { cwd: root, dot: true, ignore: NEVER.map((n) => `**/${n}/**`), suppressErrors: true })
  return listFiles(root, names.map((n) => n.replace(/[*?[\]{}()!]/g, '\\$&')), [])
}
