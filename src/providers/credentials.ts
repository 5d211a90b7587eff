/**
 * The environment variables each cloud provider reads its credentials from, first one preferred.
 * Shared by the provider factories (missing key: the error names the variable) and `doctor`.
 */
export const PROVIDER_ENV: Record<string, string[]> = {
  watasu: ['WATASU_API_KEY', 'WATASU_ACCESS_TOKEN'],
  e2b: ['E2B_API_KEY'],
  opensandbox: ['OPEN_SANDBOX_API_KEY'],
  microsandbox: ['MSB_API_KEY'],
  heyo: ['HEYO_API_KEY'],
}
