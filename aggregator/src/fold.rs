//! Folding usages into a daily bucket: pure and exact.
//!
//! A bucket keeps every accumulator (count, sum, min, max, last), so its value is exact for
//! each function and does not depend on the order in which batches arrive: SUM, COUNT, MIN and
//! MAX are commutative; LAST keeps the usage with the latest datetime, ties broken by
//! (job id, index); AVG is sum / count, rounded by `rust_decimal` to 28 significant digits.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uts_common::domain::AggregationFunction;

/// The usage that is "last" so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Last {
    pub value: Decimal,
    pub at: DateTime<Utc>,
    pub job_id: String,
    pub index: i32,
}

impl Last {
    fn later_than(&self, other: &Last) -> bool {
        (self.at, &self.job_id, self.index) > (other.at, &other.job_id, other.index)
    }
}

/// A bucket's sum would exceed `rust_decimal`'s range (about 7.9e28).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accumulators {
    pub count: i64,
    pub sum: Decimal,
    pub min: Decimal,
    pub max: Decimal,
    pub last: Last,
}

impl Accumulators {
    /// Accumulators of a bucket holding one usage.
    pub fn of(value: Decimal, last: Last) -> Self {
        Self { count: 1, sum: value, min: value, max: value, last }
    }

    /// Adds one usage; `Err` (and nothing changed) when the sum would leave the exact range.
    pub fn add(&mut self, value: Decimal, last: Last) -> Result<(), Overflow> {
        self.sum = self.sum.checked_add(value).ok_or(Overflow)?;
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if last.later_than(&self.last) {
            self.last = last;
        }
        Ok(())
    }

    /// Adds one usage given by parts; the `Last` (and its job id) is built only when this
    /// usage becomes the last one. `Err` (and nothing changed) as for [`Accumulators::add`].
    pub fn add_usage(&mut self, value: Decimal, at: DateTime<Utc>, job_id: &str, index: i32) -> Result<(), Overflow> {
        self.sum = self.sum.checked_add(value).ok_or(Overflow)?;
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if (at, job_id, index) > (self.last.at, self.last.job_id.as_str(), self.last.index) {
            self.last = Last { value, at, job_id: job_id.to_owned(), index };
        }
        Ok(())
    }

    /// The bucket's value under `function`.
    pub fn value(&self, function: AggregationFunction) -> Decimal {
        match function {
            AggregationFunction::Sum => self.sum,
            AggregationFunction::Count => Decimal::from(self.count),
            AggregationFunction::Min => self.min,
            AggregationFunction::Max => self.max,
            AggregationFunction::Avg => self.sum / Decimal::from(self.count),
            AggregationFunction::Last => self.last.value,
        }
        .normalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    fn last(value: &str, second: i64, job: &str, index: i32) -> Last {
        Last { value: d(value), at: DateTime::from_timestamp(second, 0).unwrap(), job_id: job.into(), index }
    }

    #[test]
    fn every_function_is_exact() {
        let mut acc = Accumulators::of(d("0.1"), last("0.1", 10, "a", 0));
        acc.add(d("0.2"), last("0.2", 30, "a", 1)).unwrap();
        acc.add(d("-1.25"), last("-1.25", 20, "b", 0)).unwrap();
        assert_eq!(acc.value(AggregationFunction::Sum).to_string(), "-0.95");
        assert_eq!(acc.value(AggregationFunction::Count).to_string(), "3");
        assert_eq!(acc.value(AggregationFunction::Min).to_string(), "-1.25");
        assert_eq!(acc.value(AggregationFunction::Max).to_string(), "0.2");
        assert_eq!(acc.value(AggregationFunction::Last).to_string(), "0.2");
        assert_eq!(acc.value(AggregationFunction::Avg), d("-0.95") / d("3"));
    }

    #[test]
    fn order_of_arrival_does_not_matter() {
        let usages = [("5", 100, "j2", 3), ("7", 100, "j1", 9), ("1", 50, "j3", 0)];
        let fold = |order: &[usize]| {
            let (v, s, j, i) = usages[order[0]];
            let mut acc = Accumulators::of(d(v), last(v, s, j, i));
            for &k in &order[1..] {
                let (v, s, j, i) = usages[k];
                acc.add(d(v), last(v, s, j, i)).unwrap();
            }
            acc
        };
        let a = fold(&[0, 1, 2]);
        assert_eq!(a, fold(&[2, 1, 0]));
        assert_eq!(a, fold(&[1, 2, 0]));
        // Same datetime: the greater (job id, index) wins, whatever came first.
        assert_eq!(a.last.value, d("5"));
    }

    #[test]
    fn adding_by_parts_equals_adding_a_last() {
        let usages = [("5", 100, "j2", 3), ("7", 100, "j1", 9), ("1", 50, "j3", 0), ("2", 100, "j2", 4)];
        let mut whole = Accumulators::of(d("0"), last("0", 0, "j0", 0));
        let mut parts = whole.clone();
        for (v, s, j, i) in usages {
            whole.add(d(v), last(v, s, j, i)).unwrap();
            parts.add_usage(d(v), DateTime::from_timestamp(s, 0).unwrap(), j, i).unwrap();
        }
        assert_eq!(whole, parts);
        assert_eq!(parts.last.value, d("2"));
        let before = parts.clone();
        assert_eq!(parts.add_usage(Decimal::MAX, DateTime::from_timestamp(1, 0).unwrap(), "j", 0), Err(Overflow));
        assert_eq!(parts, before);
    }

    #[test]
    fn a_sum_leaving_the_range_is_refused_without_change() {
        let mut acc = Accumulators::of(Decimal::MAX, last("1", 1, "a", 0));
        let before = acc.clone();
        assert_eq!(acc.add(d("1"), last("1", 2, "a", 1)), Err(Overflow));
        assert_eq!(acc, before);
    }
}
