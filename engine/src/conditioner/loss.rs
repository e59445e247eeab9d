//! Which datagrams the link loses: uniform or Gilbert-Elliott burst loss.

use rand::Rng;

/// How the next loss decision is drawn; derived from a validated config.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Nothing is lost; draws no random numbers so a clean link costs nothing.
    Never,
    /// Everything is lost.
    Always,
    /// Each datagram is lost independently with this probability.
    Uniform(f64),
    /// Two-state Markov chain (Gilbert-Elliott with a loss-free good state and a total-loss
    /// bad state): enter the bad state with `enter`, leave it with `leave`.
    Burst { enter: f64, leave: f64 },
}

/// Per-datagram loss decisions; keeps the burst state across config changes.
#[derive(Debug, Clone)]
pub(crate) struct LossModel {
    mode: Mode,
    /// True while inside a loss burst.
    in_burst: bool,
}

impl LossModel {
    /// A model for `loss_pct` percent loss in bursts of mean `burst_len` datagrams.
    ///
    /// Expects a config that passed `validate`.
    pub(crate) fn new(loss_pct: f64, burst_len: f64) -> Self {
        let mut model = Self {
            mode: Mode::Never,
            in_burst: false,
        };
        model.configure(loss_pct, burst_len);
        model
    }

    /// Switches to new settings; the next decision uses them.
    pub(crate) fn configure(&mut self, loss_pct: f64, burst_len: f64) {
        let loss = loss_pct / 100.0;
        self.mode = if loss <= 0.0 {
            Mode::Never
        } else if loss >= 1.0 {
            Mode::Always
        } else if burst_len <= 1.0 {
            Mode::Uniform(loss)
        } else {
            // Sojourn in the bad state is geometric with mean 1 / leave, so leave = 1 / burst.
            // The long-run share of bad steps is enter / (enter + leave); setting it to `loss`
            // gives enter = loss * leave / (1 - loss). `validate` keeps enter <= 1.
            let leave = 1.0 / burst_len;
            let enter = (loss * leave / (1.0 - loss)).min(1.0);
            Mode::Burst { enter, leave }
        };
        if !matches!(self.mode, Mode::Burst { .. }) {
            self.in_burst = false;
        }
    }

    /// True when the next datagram is lost.
    pub(crate) fn lose(&mut self, rng: &mut impl Rng) -> bool {
        match self.mode {
            Mode::Never => false,
            Mode::Always => true,
            Mode::Uniform(p) => rng.random::<f64>() < p,
            Mode::Burst { enter, leave } => {
                // Step the chain, then the new state decides this datagram.
                let flip = if self.in_burst { leave } else { enter };
                if rng.random::<f64>() < flip {
                    self.in_burst = !self.in_burst;
                }
                self.in_burst
            }
        }
    }
}
