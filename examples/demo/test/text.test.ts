import { describe, expect, it } from 'vitest'
import { slugify, wrap } from '../src/text'

describe('slugify', () => {
  it.each([
    ['Hello, World!', 'hello-world'],
    ['  Crème brûlée  ', 'creme-brulee'],
    ['already-a-slug', 'already-a-slug'],
  ])('%s -> %s', (input, slug) => {
    expect(slugify(input)).toBe(slug)
  })
})

describe('wrap', () => {
  it('wraps greedily', () => {
    expect(wrap('the quick brown fox jumps over the lazy dog', 10)).toMatchInlineSnapshot(`
      [
        "the quick",
        "brown fox",
        "jumps over",
        "the lazy",
        "dog",
      ]
    `)
  })
})
