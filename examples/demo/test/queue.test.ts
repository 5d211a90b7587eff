import { expect, it } from 'vitest'
import { createQueue } from '../src/queue'

it('never runs more than the limit at once', async () => {
  const run = createQueue(2)
  let active = 0
  let peak = 0
  const job = async () => {
    active++
    peak = Math.max(peak, active)
    await new Promise((r) => setTimeout(r, 10))
    active--
  }
  await Promise.all(Array.from({ length: 8 }, () => run(job)))
  expect(peak).toBe(2)
})
