export { sandbox, type SandboxPoolOptions } from './pool/index.js'
export { local, type LocalProviderOptions } from './providers/local.js'
export type { SandboxProvider, ProviderSession, ProviderSandbox, CreateOptions } from './providers/types.js'
