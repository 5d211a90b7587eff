import fs from 'node:fs'
import os from 'node:os'
import { expect, it } from 'vitest'

// What untrusted test code sees from inside its sandbox.
it('runs as the unprivileged sandbox user, with loopback only', () => {
  expect(os.userInfo().username).toBe('sandbox')
  expect(Object.keys(os.networkInterfaces())).toEqual(['lo'])
})

it('cannot read host secrets', () => {
  expect(fs.existsSync('/etc/shadow')).toBe(false)
  expect(fs.existsSync('/root')).toBe(false)
})
