//! The usage page's chart: bars of daily spend, a dashed line at the daily cap, the y axis in
//! credits, some dates under it. An inline `<svg>` (the CSP allows markup, not inline styles):
//! presentation attributes give it its colours when shown alone, the stylesheet's classes when
//! embedded. Sized by its viewBox, it scales to its container.

use maud::{html, Markup};

use crate::pages::UsageView;
use crate::{credits, credits_number};

const W: f64 = 640.0;
const H: f64 = 240.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 8.0;
pub(crate) const TOP: f64 = 26.0;
const BOTTOM: f64 = 28.0;
const PLOT_W: f64 = W - LEFT - RIGHT;
pub(crate) const PLOT_H: f64 = H - TOP - BOTTOM;
const TICKS: i64 = 4;
const ACCENT: &str = "#2458a6";
const OVER: &str = "#b3261e";
const INK: &str = "#555";

/// The chart of daily spend, the `<svg>` alone.
pub fn spend_chart(usage: &UsageView) -> String {
    spend_chart_markup(usage).into_string()
}

/// "Spent 3.20 credits this month of 50.00 credits": the chart's accessible name.
fn summary(u: &UsageView) -> String {
    match u.monthly_cap { Some(cap) => format!("Spent {} this month of {}", credits(u.month_spent), credits(cap)), None => format!("Spent {} this month", credits(u.month_spent)) }
}

/// "This month: 3.20 credits of 50.00 credits (monthly cap)".
pub(crate) fn month_line(u: &UsageView) -> String {
    match u.monthly_cap { Some(cap) => format!("This month: {} of {} (monthly cap)", credits(u.month_spent), credits(cap)), None => format!("This month: {} (no monthly cap)", credits(u.month_spent)) }
}

/// A step of 1, 2 or 5 times a power of ten, at least a hundredth of a credit, with `TICKS`
/// steps reaching `top`.
fn nice_step(top: i64) -> i64 {
    let raw = (top + TICKS - 1) / TICKS;
    let mut mag = 10_000i64;
    loop {
        for m in [1, 2, 5] {
            if mag.saturating_mul(m) >= raw { return mag.saturating_mul(m); }
        }
        if mag > i64::MAX / 100 { return raw.max(1); }
        mag *= 10;
    }
}

/// `2024-05-07` → `May 7`; anything else as given.
fn short_date(date: &str) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let mut parts = date.get(..10).unwrap_or("").split('-').skip(1);
    match (parts.next().and_then(|m| m.parse::<usize>().ok()), parts.next().and_then(|d| d.parse::<u32>().ok())) {
        (Some(m @ 1..=12), Some(d)) => format!("{} {d}", MONTHS[m - 1]),
        _ => date.to_owned(),
    }
}

fn f(v: f64) -> String {
    format!("{v:.1}")
}

pub(crate) fn spend_chart_markup(u: &UsageView) -> Markup {
    let label = summary(u);
    let top = u.days.iter().map(|d| d.spent).max().unwrap_or(0).max(0);
    let empty = top == 0;
    let ymax = if empty { 1 } else { nice_step(top.max(u.daily_cap.unwrap_or(0))) * TICKS };
    let y_of = |v: i64| TOP + PLOT_H - (v.clamp(0, ymax) as f64 / ymax as f64) * PLOT_H;
    let n = u.days.len().max(1);
    let slot = PLOT_W / n as f64;
    let bar_w = (slot * 0.72).min(48.0);
    let every = n.div_ceil(7);
    html! {
        svg.spend-chart #spend-chart xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(label) {
            title { (label) }
            desc { (month_line(u)) }
            @if empty {
                text.empty-chart x=(f(W / 2.0)) y=(f(H / 2.0)) text-anchor="middle" font-size="16" fill=(INK) { "No spending yet" }
            } @else {
                g.axis {
                    @for k in 0..=TICKS {
                        @let v = ymax / TICKS * k;
                        line.grid x1=(f(LEFT)) x2=(f(LEFT + PLOT_W)) y1=(f(y_of(v))) y2=(f(y_of(v))) stroke="#ddd" stroke-width="1" {}
                        text.y-label x=(f(LEFT - 6.0)) y=(f(y_of(v) + 4.0)) text-anchor="end" font-size="11" fill=(INK) { (credits_number(v)) }
                    }
                    text.y-unit x=(f(LEFT - 6.0)) y="12" text-anchor="end" font-size="11" fill=(INK) { "credits" }
                }
                g.bars {
                    @for (i, d) in u.days.iter().enumerate() {
                        @let h = y_of(0) - y_of(d.spent);
                        @let over = u.daily_cap.is_some_and(|c| d.spent > c);
                        rect class=(if over { "bar over" } else { "bar" }) x=(f(LEFT + i as f64 * slot + (slot - bar_w) / 2.0)) y=(f(y_of(d.spent))) width=(f(bar_w)) height=(f(h)) fill=(if over { OVER } else { ACCENT }) data-date=(d.date) data-spent=(d.spent) {
                            title { (d.date) ": " (credits(d.spent)) }
                        }
                    }
                }
                g.x-labels {
                    @for (i, d) in u.days.iter().enumerate() {
                        @if i % every == 0 {
                            text.x-label x=(f(LEFT + (i as f64 + 0.5) * slot)) y=(f(H - 8.0)) text-anchor="middle" font-size="11" fill=(INK) { (short_date(&d.date)) }
                        }
                    }
                }
                @if let Some(cap) = u.daily_cap {
                    g.cap {
                        line.cap-line x1=(f(LEFT)) x2=(f(LEFT + PLOT_W)) y1=(f(y_of(cap))) y2=(f(y_of(cap))) stroke=(OVER) stroke-width="1.5" stroke-dasharray="6 4" {
                            title { "Daily cap: " (credits(cap)) }
                        }
                        text.cap-label x=(f(LEFT + PLOT_W)) y=(f(y_of(cap) - 4.0)) text-anchor="end" font-size="11" fill=(OVER) { "daily cap " (credits_number(cap)) }
                    }
                }
            }
        }
    }
}
