/**
 * The environment variables each provider reads its credentials from, first one preferred.
 * Shared by the provider factories (a missing key names the variable) and `doctor`.
 */
export const PROVIDER_ENV = {
  watasu: ['WATASU_API_KEY', 'WATASU_ACCESS_TOKEN'],
  opensandbox: ['OPEN_SANDBOX_API_KEY'],
  e2b: ['E2B_API_KEY'],
  // A local Heyo daemon takes no key: its URL alone configures heyo().
  heyo: ['HEYO_API_KEY', 'HEYO_BASE_URL'],
} as const

export type RemoteProviderName = keyof typeof PROVIDER_ENV

/** An environment variable, or undefined when it is unset or empty (CI systems set unset ones to ''). */
export function env(name: string): string | undefined {
  return process.env[name] || undefined
}

/** The first of the provider's key variables that is set, if any. */
export function keyVariable(provider: RemoteProviderName): string | undefined {
  return PROVIDER_ENV[provider].find((v) => env(v))
}

/** The key given as an option, else from the provider's variables; throws naming them if none is set. */
export function requireKey(provider: RemoteProviderName, given: string | undefined): string {
  const variable = keyVariable(provider)
  const key = given ?? (variable && env(variable))
  if (!key) {
    throw new Error(`${provider}(): no API key. Set ${PROVIDER_ENV[provider].join(' or ')} in the environment (it never enters a sandbox), or pass ${provider}({ apiKey }).`)
  }
  return key
}
