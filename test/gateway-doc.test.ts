/** docs/host-rpc.md is the gateway's list: every method on it, with its Vitest major and rule, and nothing else. */
import fs from 'node:fs'
import path from 'node:path'
import { expect, it } from 'vitest'
import { METHODS, REFUSED } from '../src/pool/gateway/methods.js'
import { REPO } from './support/vitest-run.js'

it("documents exactly the gateway's list", () => {
  const doc = fs.readFileSync(path.join(REPO, 'docs/host-rpc.md'), 'utf8')
  const rows = [...doc.matchAll(/^\| `(\w+)\(.*?\)` \| (\d) \| ([\w-]+) \|/gm)].map(([, method, since, rule]) => [method, Number(since), rule])
  const listed = [
    ...Object.entries(METHODS).map(([method, spec]) => [method, spec.since, spec.rule]),
    ...Object.keys(REFUSED).map((method) => [method, rows.find(([m]) => m === method)?.[1], 'refused']),
  ]
  expect(rows.sort()).toEqual(listed.sort())
  expect(rows.length).toBe(Object.keys(METHODS).length + Object.keys(REFUSED).length)
})
