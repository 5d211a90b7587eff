/** The providers by name, for the command line (`reap --provider`, `doctor`). */
import type { RemoteProviderName } from './credentials.js'
import { e2b } from './e2b.js'
import { heyo } from './heyo.js'
import { opensandbox } from './opensandbox.js'
import type { SandboxProvider } from './types.js'
import { watasu } from './watasu.js'

/** Remote providers, configured from their environment variables (the same names as PROVIDER_ENV). */
export const REMOTE_PROVIDERS: Record<RemoteProviderName, () => SandboxProvider> = {
  watasu: () => watasu(),
  opensandbox: () => opensandbox(),
  e2b: () => e2b(),
  heyo: () => heyo(),
}

export function isRemoteProvider(name: string): name is RemoteProviderName {
  return Object.hasOwn(REMOTE_PROVIDERS, name)
}
