//! A KPI's month, folded from its days: pure arithmetic, no HTTP and no database
//! (`monthly_api` reads the days and answers).
//!
//! Each day's value with the KPI's daily function (from the bucket's exact accumulators,
//! whatever function the rule used), days without usages filled per `preFill` (ZERO: 0, NONE:
//! left out, LAST: the previous day's value), folded with the monthly function, then multiplied
//! by the unit conversion factor. Every step is checked: a result beyond the exact decimal range
//! is [`OutOfRange`], never a panic or a rounded number.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{Duration, NaiveDate};
use rust_decimal::Decimal;
use uts_common::domain::AggregationFunction;

/// What a day without usages counts as when a month is folded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreFill {
    /// As 0.
    #[default]
    Zero,
    /// Not at all: the day is skipped.
    None,
    /// As the previous day's value.
    Last,
}

impl PreFill {
    pub const ALL: [PreFill; 3] = [PreFill::Zero, PreFill::None, PreFill::Last];

    pub fn as_str(self) -> &'static str {
        match self {
            PreFill::Zero => "ZERO",
            PreFill::None => "NONE",
            PreFill::Last => "LAST",
        }
    }
}

impl FromStr for PreFill {
    type Err = ();
    fn from_str(text: &str) -> Result<Self, ()> {
        PreFill::ALL.into_iter().find(|p| p.as_str() == text).ok_or(())
    }
}

/// A day's exact accumulators (from `daily_aggregates`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Day {
    pub count: i64,
    pub sum: Decimal,
    pub min: Decimal,
    pub max: Decimal,
    pub last: Decimal,
}

/// A month's (or a converted day's) value beyond the exact decimal range (about 7.9e28): each
/// day's bucket is in range, but their sum or its conversion is not. Answered 422, never a
/// rounded or saturated number (`rust_decimal`'s operators panicked here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange;

fn checked_sum(values: &[Decimal]) -> Result<Decimal, OutOfRange> {
    values.iter().try_fold(Decimal::ZERO, |sum, v| sum.checked_add(*v)).ok_or(OutOfRange)
}

fn fold(function: AggregationFunction, values: &[Decimal]) -> Result<Option<Decimal>, OutOfRange> {
    let Some((first, rest)) = values.split_first() else { return Ok(None) };
    Ok(Some(match function {
        AggregationFunction::Sum => checked_sum(values)?,
        AggregationFunction::Count => Decimal::from(values.len()),
        AggregationFunction::Min => rest.iter().fold(*first, |a, b| a.min(*b)),
        AggregationFunction::Max => rest.iter().fold(*first, |a, b| a.max(*b)),
        AggregationFunction::Avg => checked_sum(values)?.checked_div(Decimal::from(values.len())).ok_or(OutOfRange)?,
        AggregationFunction::Last => *values.last().expect("not empty"),
    }))
}

/// `value` × the KPI's unit conversion factor, exactly.
pub(crate) fn convert(value: Decimal, factor: Decimal) -> Result<Decimal, OutOfRange> {
    value.checked_mul(factor).map(|v| v.normalize()).ok_or(OutOfRange)
}

/// Each day's value of `from..=until` with the daily function, days without usages filled per
/// `pre_fill` (None: left out). Not yet multiplied by the unit conversion factor.
pub fn daily_values(
    days: &BTreeMap<NaiveDate, Day>,
    from: NaiveDate,
    until: NaiveDate,
    daily: AggregationFunction,
    pre_fill: PreFill,
) -> Vec<(NaiveDate, Option<Decimal>)> {
    let mut values = Vec::new();
    let mut previous: Option<Decimal> = None;
    let mut day = from;
    while day <= until {
        let value = match days.get(&day) {
            Some(d) => Some(match daily {
                AggregationFunction::Sum => d.sum,
                AggregationFunction::Count => Decimal::from(d.count),
                AggregationFunction::Min => d.min,
                AggregationFunction::Max => d.max,
                // A day's sum divided by its count only shrinks: in range.
                AggregationFunction::Avg => d.sum.checked_div(Decimal::from(d.count.max(1))).unwrap_or(d.sum),
                AggregationFunction::Last => d.last,
            }),
            None => match pre_fill {
                PreFill::Zero => Some(Decimal::ZERO),
                PreFill::None => None,
                PreFill::Last => previous,
            },
        };
        if value.is_some() {
            previous = value;
        }
        values.push((day, value));
        day += Duration::days(1);
    }
    values
}

/// The month's value from the days `from..=until` (None when there is nothing to fold).
pub fn monthly_value(
    days: &BTreeMap<NaiveDate, Day>,
    from: NaiveDate,
    until: NaiveDate,
    daily: AggregationFunction,
    monthly: AggregationFunction,
    pre_fill: PreFill,
    factor: Decimal,
) -> Result<Option<Decimal>, OutOfRange> {
    let values: Vec<Decimal> =
        daily_values(days, from, until, daily, pre_fill).into_iter().filter_map(|(_, v)| v).collect();
    fold(monthly, &values)?.map(|v| convert(v, factor)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    fn day(n: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 2, n).unwrap()
    }

    fn days() -> BTreeMap<NaiveDate, Day> {
        BTreeMap::from([
            (day(2), Day { count: 2, sum: d("3"), min: d("1"), max: d("2"), last: d("2") }),
            (day(4), Day { count: 1, sum: d("5"), min: d("5"), max: d("5"), last: d("5") }),
        ])
    }

    #[test]
    fn a_month_beyond_the_exact_range_is_an_error_not_a_panic() {
        use AggregationFunction as F;
        let max = d("79228162514264337593543950335");
        let huge = Day { count: 1, sum: max, min: max, max, last: max };
        let days = BTreeMap::from([(day(1), huge.clone()), (day(2), huge)]);
        let one = d("1");
        assert_eq!(monthly_value(&days, day(1), day(2), F::Sum, F::Sum, PreFill::None, one), Err(OutOfRange));
        assert_eq!(monthly_value(&days, day(1), day(2), F::Sum, F::Avg, PreFill::None, one), Err(OutOfRange));
        // One day is in range, its conversion is not.
        assert_eq!(monthly_value(&days, day(1), day(1), F::Sum, F::Sum, PreFill::None, d("2")), Err(OutOfRange));
        assert_eq!(monthly_value(&days, day(1), day(2), F::Sum, F::Max, PreFill::None, one), Ok(Some(max)));
    }

    #[test]
    fn pre_fill_decides_what_missing_days_count_as() {
        use AggregationFunction as F;
        let one = d("1");
        // Days 1..=5: day 2 sums 3, day 4 sums 5.
        assert_eq!(monthly_value(&days(), day(1), day(5), F::Sum, F::Sum, PreFill::Zero, one), Ok(Some(d("8"))));
        assert_eq!(monthly_value(&days(), day(1), day(5), F::Sum, F::Avg, PreFill::Zero, one), Ok(Some(d("1.6"))));
        assert_eq!(monthly_value(&days(), day(1), day(5), F::Sum, F::Avg, PreFill::None, one), Ok(Some(d("4"))));
        // LAST carries day 2 into day 3 and day 4 into day 5: 3 + 3 + 5 + 5.
        assert_eq!(monthly_value(&days(), day(1), day(5), F::Sum, F::Sum, PreFill::Last, one), Ok(Some(d("16"))));
        assert_eq!(monthly_value(&days(), day(1), day(5), F::Max, F::Min, PreFill::None, one), Ok(Some(d("2"))));
        assert_eq!(
            monthly_value(&days(), day(1), day(5), F::Count, F::Sum, PreFill::Zero, d("0.5")),
            Ok(Some(d("1.5")))
        );
        assert_eq!(monthly_value(&BTreeMap::new(), day(1), day(5), F::Sum, F::Max, PreFill::None, one), Ok(None));
    }

    #[test]
    fn pre_fill_spellings_are_the_apis() {
        assert_eq!("LAST".parse::<PreFill>(), Ok(PreFill::Last));
        assert!("last".parse::<PreFill>().is_err());
        assert_eq!(PreFill::default(), PreFill::Zero);
        for pre_fill in PreFill::ALL {
            assert_eq!(pre_fill.as_str().parse::<PreFill>(), Ok(pre_fill));
        }
    }
}
