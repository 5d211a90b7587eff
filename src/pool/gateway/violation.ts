/** A message that breaks the host gateway's protocol: the worker is ended and its file fails naming it. */
export class ProtocolViolation extends Error {}
