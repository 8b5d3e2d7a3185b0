//! Seconds as an operator writes them (`--timeout 180`, `--settle 0.2`) and
//! as the messages print them, in integers only: a span of time is a
//! [`Duration`] from the command line on, and no floating-point number is
//! parsed or printed anywhere in the program. (core's float parsing and
//! printing, with their tables, were about 30 KB of the static binary;
//! docs/packaging.md, the binary's size.)

use std::fmt;
use std::time::Duration;

/// The longest span an option takes: one year.
pub const MAX: Duration = Duration::from_secs(365 * 86_400);

/// A span printed in seconds. Without a precision, the shortest decimal that
/// is exact (`180`, `0.2`, `1.5`: what an operator wrote comes back as
/// written); with one, rounded to that many decimals, a half up
/// (`{:.3}`: `1.500`, `0.0005` gives `0.001`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Secs(pub Duration);

/// A span printed in milliseconds, as [`Secs`] prints seconds
/// (`{:.1} ms`: `2.5 ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub Duration);

impl Secs {
    /// Parses seconds as an operator writes them: digits with at most one
    /// point among them (`180`, `0.2`, `1.5`; also `.5` and `5.`, which
    /// the earlier float parser took), from 0 to one year. Digits past the
    /// nanosecond are dropped. Anything else (a sign, an exponent, spaces,
    /// `inf`) is not a number of seconds. The error is the clap value
    /// parser's: one line naming what was given.
    pub fn parse(s: &str) -> Result<Secs, String> {
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if whole.len() + frac.len() == 0 || !digits(whole) || !digits(frac) {
            return Err(format!("{s:?} is not a number of seconds"));
        }
        let secs = whole.bytes().try_fold(0u64, |n, b| {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        });
        let nanos = frac
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(9)
            .fold(0u32, |n, b| n * 10 + u32::from(b - b'0'));
        // nanos < 10^9: Duration::new does not carry, so cannot overflow.
        match secs.map(|secs| Duration::new(secs, nanos)) {
            Some(d) if d <= MAX => Ok(Secs(d)),
            _ => Err(format!("{s:?} is out of range (0 to one year)")),
        }
    }
}

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        decimal(f, d.as_secs(), d.subsec_nanos(), 9)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        // A u64 (584 million years of milliseconds), not as_millis()'s
        // u128: printing a u128 was 1.2 KB of the static binary.
        let ms = d
            .as_secs()
            .saturating_mul(1000)
            .saturating_add(u64::from(d.subsec_millis()));
        decimal(f, ms, d.subsec_nanos() % 1_000_000, 6)
    }
}

/// Writes `whole.frac`, `frac` being `places` decimal digits, at the
/// formatter's precision (else the shortest exact form), width and fill.
fn decimal(f: &mut fmt::Formatter<'_>, mut whole: u64, frac: u32, places: usize) -> fmt::Result {
    // The decimals to print: `digits` of `frac`, then `zeros` zeros.
    let (frac, digits, zeros) = match f.precision() {
        Some(p) if p < places => {
            let step = 10u32.pow((places - p) as u32);
            let mut kept = frac / step + u32::from(frac % step >= step / 2);
            if kept == 10u32.pow(p as u32) {
                whole = whole.saturating_add(1);
                kept = 0;
            }
            (kept, p, 0)
        }
        Some(p) => (frac, places, p - places),
        None => {
            let (mut frac, mut digits) = (frac, places);
            while digits > 0 && frac % 10 == 0 {
                frac /= 10;
                digits -= 1;
            }
            (frac, digits, 0)
        }
    };
    let mut s = whole.to_string();
    if digits > 0 {
        s.push('.');
        s.push_str(&format!("{frac:0digits$}"));
        s.extend(std::iter::repeat('0').take(zeros));
    }
    f.pad_integral(true, "", &s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> Duration {
        Secs::parse(s).unwrap().0
    }

    #[test]
    fn what_an_operator_writes_is_parsed_exactly() {
        assert_eq!(secs("180"), Duration::from_secs(180));
        assert_eq!(secs("0.2"), Duration::from_millis(200));
        assert_eq!(secs("1.5"), Duration::from_millis(1500));
        assert_eq!(secs("0"), Duration::ZERO);
        assert_eq!(secs("007.250"), Duration::from_millis(7250));
        assert_eq!(secs(".5"), Duration::from_millis(500));
        assert_eq!(secs("5."), Duration::from_secs(5));
        assert_eq!(secs("0.000000001"), Duration::from_nanos(1));
        // Past the nanosecond: dropped, not an error.
        assert_eq!(secs("0.0000000019"), Duration::from_nanos(1));
        assert_eq!(secs("1.000000000000000000000"), Duration::from_secs(1));
    }

    #[test]
    fn one_year_is_the_most_and_more_is_out_of_range() {
        assert_eq!(secs("31536000"), MAX);
        assert_eq!(secs("31536000.000"), MAX);
        let over = ["31536000.000000001", "31536001", "99999999999999999999999"];
        for s in over {
            assert_eq!(
                Secs::parse(s),
                Err(format!("{s:?} is out of range (0 to one year)"))
            );
        }
    }

    #[test]
    fn anything_but_digits_and_one_point_is_not_a_number() {
        for s in [
            "", ".", "abc", "-1", "+5", "1e3", "1.2.3", " 5", "5 ", "inf", "NaN", "0x10", "5s",
            "1,5", "١",
        ] {
            assert_eq!(
                Secs::parse(s),
                Err(format!("{s:?} is not a number of seconds")),
                "{s:?}"
            );
        }
    }

    #[test]
    fn display_is_the_shortest_exact_decimal() {
        let shown = |d: Duration| Secs(d).to_string();
        assert_eq!(shown(Duration::from_secs(180)), "180");
        assert_eq!(shown(Duration::from_millis(200)), "0.2");
        assert_eq!(shown(Duration::from_millis(1500)), "1.5");
        assert_eq!(shown(Duration::ZERO), "0");
        assert_eq!(shown(Duration::from_nanos(1)), "0.000000001");
        assert_eq!(shown(Duration::new(5, 10_000)), "5.00001");
        assert_eq!(shown(MAX), "31536000");
    }

    #[test]
    fn the_defaults_show_as_the_float_defaults_did() {
        // `[default: ...]` in --help and the man page, from f64 before.
        use crate::defaults::*;
        let shown: Vec<String> = [
            TIMEOUT,
            PORT_TIMEOUT,
            GRACE,
            SETTLE,
            NO_CHANNEL_AFTER,
            BARRIER_TIMEOUT,
            BARRIER_GRACE,
            WAIT_TAKEN,
            WAIT_AGENT,
        ]
        .iter()
        .map(|&d| Secs(d).to_string())
        .collect();
        assert_eq!(
            shown,
            ["180", "30", "5", "0.2", "2", "180", "10", "4", "240"]
        );
    }

    #[test]
    fn precision_rounds_half_up_and_pads_with_zeros() {
        let at = |d: Duration, p: usize| format!("{:.p$}", Secs(d));
        assert_eq!(at(Duration::from_millis(1500), 3), "1.500");
        assert_eq!(at(Duration::from_secs(2), 1), "2.0");
        assert_eq!(at(Duration::from_micros(1_234_567), 3), "1.235");
        assert_eq!(at(Duration::from_micros(1_234_499), 3), "1.234");
        assert_eq!(at(Duration::from_micros(500), 3), "0.001");
        assert_eq!(at(Duration::from_micros(499), 3), "0.000");
        assert_eq!(at(Duration::from_micros(999_500), 3), "1.000");
        assert_eq!(at(Duration::from_millis(9_960), 1), "10.0");
        assert_eq!(at(Duration::from_millis(2_500), 0), "3");
        assert_eq!(at(Duration::from_millis(2_499), 0), "2");
        assert_eq!(at(Duration::from_nanos(1), 12), "0.000000001000");
        assert_eq!(at(Duration::new(7, 123_456_789), 9), "7.123456789");
    }

    #[test]
    fn width_and_fill_are_honoured() {
        let d = Secs(Duration::from_millis(1500));
        assert_eq!(format!("{d:>8.3}|"), "   1.500|");
        assert_eq!(format!("{d:<6}|"), "1.5   |");
        assert_eq!(format!("{d:07.2}"), "0001.50");
    }

    #[test]
    fn millis_print_as_seconds_do() {
        let at = |d: Duration| format!("{:.1} ms", Millis(d));
        assert_eq!(at(Duration::from_micros(2_500)), "2.5 ms");
        assert_eq!(at(Duration::from_micros(2_449)), "2.4 ms");
        assert_eq!(at(Duration::from_micros(2_450)), "2.5 ms");
        assert_eq!(at(Duration::from_micros(999_960)), "1000.0 ms");
        assert_eq!(at(Duration::from_secs(3)), "3000.0 ms");
        assert_eq!(Millis(Duration::from_nanos(1_250_000)).to_string(), "1.25");
    }

    #[test]
    fn the_longest_duration_saturates_instead_of_overflowing() {
        // Rounding u64::MAX s up would overflow: it stays u64::MAX.
        assert_eq!(
            Secs(Duration::MAX).to_string(),
            "18446744073709551615.999999999"
        );
        assert_eq!(
            format!("{:.1}", Secs(Duration::MAX)),
            "18446744073709551615.0"
        );
        assert_eq!(
            format!("{:.0}", Millis(Duration::MAX)),
            "18446744073709551615"
        );
    }

    proptest::proptest! {
        /// A decimal is taken, or refused as out of range, as the f64
        /// parser before took it, and to within a few nanoseconds (the
        /// f64's error) of its value.
        #[test]
        fn decimals_parse_as_the_float_parser_took_them(s in "[0-9]{0,9}[.]?[0-9]{0,12}") {
            let float = s.parse::<f64>().ok().filter(|v| (0.0..=MAX.as_secs_f64()).contains(v));
            match (Secs::parse(&s), float) {
                (Ok(Secs(d)), Some(v)) => {
                    let off = (d.as_secs_f64() - v).abs();
                    proptest::prop_assert!(off < 1e-8, "{s:?}: {d:?} against {v}");
                }
                (Err(e), None) => proptest::prop_assert!(s.is_empty() || s == "." || e.contains("out of range"), "{s:?}: {e}"),
                (ours, float) => proptest::prop_assert!(false, "{s:?}: {ours:?} against {float:?}"),
            }
        }

        /// What Display prints, the parser takes back as the same span.
        #[test]
        fn display_parses_back_to_the_same_span(secs in 0..=MAX.as_secs(), nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos).min(MAX);
            proptest::prop_assert_eq!(Secs::parse(&Secs(d).to_string()), Ok(Secs(d)));
        }

        /// At a precision of p decimals, what is printed is the span to
        /// within half a unit of the last decimal, and has p decimals.
        #[test]
        fn precision_is_within_half_a_last_decimal(secs in 0..=MAX.as_secs(), nanos in 0u32..1_000_000_000, p in 0usize..12) {
            // Below MAX, rounding up gives at most MAX (a whole second).
            let d = Duration::new(secs, nanos).min(MAX);
            let shown = format!("{:.p$}", Secs(d));
            proptest::prop_assert_eq!(shown.split_once('.').map_or(0, |(_, f)| f.len()), p);
            let back = Secs::parse(&shown).unwrap().0;
            let half = Duration::from_nanos(10u64.pow(9u32.saturating_sub(p as u32)) / 2);
            let off = back.max(d) - back.min(d);
            proptest::prop_assert!(off <= half, "{d:?} shown as {shown}");
        }

        /// The log lines read as they did with `as_secs_f64()`: the same
        /// text at every precision they use, but for spans within 100 ns
        /// of a half (where an f64, a few ns off, may round either way;
        /// this rounds a half up).
        #[test]
        fn precision_agrees_with_the_float_formatting_it_replaced(secs in 0..=MAX.as_secs(), nanos in 0u32..1_000_000_000, p in 0usize..=6) {
            let step = 10u32.pow(9 - p as u32);
            let from_half = (nanos % step).abs_diff(step / 2);
            proptest::prop_assume!(from_half > 100);
            let d = Duration::new(secs, nanos);
            proptest::prop_assert_eq!(format!("{:.p$}", Secs(d)), format!("{:.p$}", d.as_secs_f64()));
        }
    }
}
