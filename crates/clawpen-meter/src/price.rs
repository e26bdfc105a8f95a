//! Estimates and costs. Integer micro-credits; every division rounds up, so rounding never
//! undercharges.

use crate::config::ModelConfig;
use crate::usage::Usage;

/// `tokens * per_mtok / 1e6`, rounded up, without overflow.
pub fn tokens_cost(tokens: i64, per_mtok: i64) -> i64 {
    let t = tokens.max(0) as i128 * per_mtok.max(0) as i128;
    ((t + 999_999) / 1_000_000) as i64
}

/// The hold for a request: its input bound (see [`crate::request`]) at the worst input rate plus
/// all of `max_tokens` as output. What a provider bills for the call never passes it.
pub fn estimate(model: &ModelConfig, input_tokens_max: i64, max_tokens: i64) -> i64 {
    cost(model, &worst_input(model, input_tokens_max, max_tokens))
}

/// `input` tokens in the dearest input class (plain, cache read or cache write), and `output`.
pub fn worst_input(model: &ModelConfig, input: i64, output: i64) -> Usage {
    let mut u = Usage { output, ..Usage::default() };
    if model.cache_write_per_mtok > model.input_per_mtok.max(model.cache_read_per_mtok) {
        u.cache_write = input;
    } else if model.cache_read_per_mtok > model.input_per_mtok {
        u.cache_read = input;
    } else {
        u.input = input;
    }
    u
}

/// What a call cost, from the usage the provider returned. `usage.input` excludes cached tokens.
pub fn cost(model: &ModelConfig, u: &Usage) -> i64 {
    tokens_cost(u.input, model.input_per_mtok)
        + tokens_cost(u.output, model.output_per_mtok)
        + tokens_cost(u.cache_read, model.cache_read_per_mtok)
        + tokens_cost(u.cache_write, model.cache_write_per_mtok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelConfig {
        ModelConfig { upstream: "u".into(), upstream_model: None, input_per_mtok: 3_000_000, output_per_mtok: 15_000_000, cache_read_per_mtok: 300_000, cache_write_per_mtok: 3_750_000, image_tokens_max: None, reasoning: false }
    }

    #[test]
    fn costs_round_up_and_add_up() {
        assert_eq!(tokens_cost(1, 1), 1);
        assert_eq!(tokens_cost(1_000_000, 3_000_000), 3_000_000);
        assert_eq!(tokens_cost(0, 5), 0);
        assert!(tokens_cost(i64::MAX, i64::MAX) > 0);
        let u = Usage { input: 1_000, output: 100, cache_read: 10, cache_write: 5 };
        assert_eq!(cost(&model(), &u), 3_000 + 1_500 + 3 + 19);
    }

    #[test]
    fn the_estimate_bounds_the_cost() {
        let m = model();
        // At most 200 input tokens, 50 output tokens.
        let est = estimate(&m, 200, 50);
        for (input, cr, cw) in [(200, 0, 0), (100, 50, 50), (0, 0, 200), (0, 200, 0)] {
            let u = Usage { input, output: 50, cache_read: cr, cache_write: cw };
            assert!(cost(&m, &u) <= est, "{u:?}");
        }
    }
}
