/** The providers by name, for the command line (`reap --provider`, `doctor`). */
import { opensandbox } from './opensandbox.js'
import type { SandboxProvider } from './types.js'
import { watasu } from './watasu.js'

/** Remote providers, configured from their environment variables. */
export const REMOTE_PROVIDERS: Record<string, () => SandboxProvider> = {
  watasu: () => watasu(),
  opensandbox: () => opensandbox(),
}
