/**
 * The clients of one `vitest-sandbox serve`: each tenant has its own token and its own namespace
 * of sandboxes, sessions and snapshots (templates included). Nothing a request can name reaches
 * another tenant's: a sandbox or snapshot of another tenant is "not found", and a snapshot name is
 * kept under its tenant's prefix, so no tenant can save a template under a name another's pool
 * looks up. A team shares templates by sharing a tenant (one token for its CI jobs).
 */
import fs from 'node:fs'
import { timingSafeEqual } from 'node:crypto'

export interface Tenant {
  name: string
  token: string
}

/** The tenant of `serve --token` (and of a server with one token): its names have no prefix. */
export const DEFAULT_TENANT = 'default'
/** Metadata key the server keeps the owner in; a client may not set it. */
export const TENANT_KEY = 'vps_tenant'
const NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/

function sameToken(given: string, expected: string): boolean {
  const a = Buffer.from(given)
  const b = Buffer.from(expected)
  return a.length === b.length && timingSafeEqual(a, b)
}

export class Tenants {
  private constructor(private readonly all: Tenant[]) {}

  /**
   * The default tenant with `token`, and those of a tenants file (`{ "<name>": "<token>", … }`).
   * Throws naming the file, the entry and the fix.
   */
  static from(token: string, file?: string): Tenants {
    const all: Tenant[] = [{ name: DEFAULT_TENANT, token }]
    if (file === undefined) return new Tenants(all)
    const bad = (why: string) => new Error(`--tenants ${file}: ${why}`)
    let parsed: unknown
    try {
      parsed = JSON.parse(fs.readFileSync(file, 'utf8'))
    } catch (err) {
      throw bad(`cannot be read as JSON (${(err as Error).message}); write it as { "team-a": "<token of 16+ characters>", ... }`)
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw bad('must be an object of tenant names to tokens')
    for (const [name, t] of Object.entries(parsed)) {
      if (!NAME.test(name) || name === DEFAULT_TENANT) throw bad(`tenant name ${JSON.stringify(name)} must be 1-64 of a-z, 0-9, _ and -, and not "${DEFAULT_TENANT}"`)
      if (typeof t !== 'string' || t.length < 16) throw bad(`the token of "${name}" must be a string of at least 16 characters`)
      if (all.some((o) => sameToken(o.token, t))) throw bad(`the token of "${name}" is another tenant's too`)
      all.push({ name, token: t })
    }
    return new Tenants(all)
  }

  /** More than the default tenant: names and metadata are kept apart. */
  get shared(): boolean {
    return this.all.length > 1
  }

  /** Sandboxes each tenant may run of the server's `max`, where there are several tenants. */
  share(max: number): number | undefined {
    return this.shared ? Math.max(1, Math.floor(max / this.all.length)) : undefined
  }

  /** The tenant a bearer token belongs to (every token compared, in constant time). */
  who(bearer: string | undefined): Tenant | undefined {
    let found: Tenant | undefined
    for (const t of this.all) if (bearer !== undefined && sameToken(bearer, t.token)) found = t
    return found
  }

  /** Does this sandbox or snapshot (by its metadata) belong to `tenant`? */
  owns(tenant: Tenant, metadata: Record<string, string>): boolean {
    return (metadata[TENANT_KEY] ?? DEFAULT_TENANT) === tenant.name
  }

  /** A client's metadata with its owner stamped in; a client's own `vps_tenant` is refused. */
  stamp(tenant: Tenant, metadata: Record<string, string>): Record<string, string> {
    if (Object.hasOwn(metadata, TENANT_KEY)) throw Object.assign(new Error(`metadata key ${TENANT_KEY} is the server's`), { code: 'invalid_argument' })
    return tenant.name === DEFAULT_TENANT ? metadata : { ...metadata, [TENANT_KEY]: tenant.name }
  }

  /** Metadata as its owner sees it. */
  shown(metadata: Record<string, string>): Record<string, string> {
    return Object.fromEntries(Object.entries(metadata).filter(([k]) => k !== TENANT_KEY))
  }

  /** The name a tenant's snapshot is kept under (`<tenant>/<name>`; the default tenant's as given). */
  snapshotName(tenant: Tenant, name: string): string {
    if (name.includes('/')) throw Object.assign(new Error(`snapshot name ${JSON.stringify(name.slice(0, 100))} may not contain '/'`), { code: 'invalid_argument' })
    return tenant.name === DEFAULT_TENANT ? name : `${tenant.name}/${name}`
  }

  /** A kept name as its tenant gave it. */
  shownName(tenant: Tenant, kept: string): string {
    return tenant.name === DEFAULT_TENANT ? kept : kept.slice(tenant.name.length + 1)
  }
}
