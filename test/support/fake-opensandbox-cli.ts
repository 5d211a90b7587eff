/**
 * The fake OpenSandbox as its own process, to point real suites at (`vitest-sandbox check
 * --provider opensandbox`). Bundle and run (it is test code, not shipped):
 *   npx rolldown test/support/fake-opensandbox-cli.ts --platform node --format esm --file node_modules/.fake-opensandbox/fake.mjs \
 *     --external busboy --external ws --external undici && node node_modules/.fake-opensandbox/fake.mjs
 * Prints OPEN_SANDBOX_DOMAIN and OPEN_SANDBOX_API_KEY lines to export.
 */
import { startFakeOpenSandbox } from './fake-opensandbox.js'

const fake = await startFakeOpenSandbox({ apiKey: process.env.OPEN_SANDBOX_API_KEY || undefined })
process.stdout.write(`OPEN_SANDBOX_DOMAIN=${fake.domain}\nOPEN_SANDBOX_API_KEY=${fake.apiKey}\n`)
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    process.stdout.write(`${signal}: ${fake.sandboxes.size} sandboxes still alive, ${fake.state.created} created in all\n`)
    void fake.close().then(() => process.exit(0))
  })
}
