/**
 * Money: integers in minor units of an ISO 4217 currency, never floats. The one rule for how many
 * minor-unit digits a currency has (EUR 2, JPY 0, KWD 3), and the exact conversions between a
 * decimal amount as an ERP stores it (`12.3450`) and minor units.
 */

/** An ISO 4217 currency code. */
export const CURRENCY_PATTERN = /^[A-Z]{3}$/;

/** Minor-unit digits of the ISO 4217 currencies that do not have 2 (Node's ICU data agrees; this list is what Tally relies on). */
const MINOR_DIGITS: Readonly<Record<string, number>> = {
  BIF: 0,
  CLP: 0,
  DJF: 0,
  GNF: 0,
  ISK: 0,
  JPY: 0,
  KMF: 0,
  KRW: 0,
  PYG: 0,
  RWF: 0,
  UGX: 0,
  VND: 0,
  VUV: 0,
  XAF: 0,
  XOF: 0,
  XPF: 0,
  BHD: 3,
  IQD: 3,
  JOD: 3,
  KWD: 3,
  LYD: 3,
  OMR: 3,
  TND: 3,
};

/** How many minor-unit digits `currency` has (2 unless listed). */
export function minorDigits(currency: string): number {
  return MINOR_DIGITS[currency] ?? 2;
}

/**
 * A decimal amount of `currency` (`12.3450`, `-3`, `0.5`) in integer minor units (1235n for EUR),
 * by integer arithmetic on its digits: sub-minor digits are rounded half away from zero.
 * Throws RangeError when `amount` is not a plain decimal.
 */
export function toMinorUnits(amount: string, currency: string): bigint {
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(amount);
  if (!m) throw new RangeError(`not a decimal: ${JSON.stringify(amount)}`);
  const digits = minorDigits(currency);
  const frac = m[3] ?? "";
  const kept = BigInt(m[2]! + frac.slice(0, digits).padEnd(digits, "0"));
  const rest = frac.slice(digits);
  const rounded = rest !== "" && rest[0]! >= "5" ? kept + 1n : kept;
  return m[1] ? -rounded : rounded;
}

/** Integer minor units of `currency` as a decimal string (1235n EUR → `12.35`, 150n JPY → `150`). */
export function fromMinorUnits(minor: bigint | number, currency: string): string {
  const n = BigInt(minor);
  const digits = minorDigits(currency);
  const abs = (n < 0n ? -n : n).toString().padStart(digits + 1, "0");
  const whole = digits === 0 ? abs : `${abs.slice(0, -digits)}.${abs.slice(-digits)}`;
  return n < 0n ? `-${whole}` : whole;
}
