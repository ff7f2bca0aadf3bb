"""Distributions from HDR histograms and the bootstrap that tells a real difference from noise.

Two sources of noise are estimated and the wider wins:

- sampling: the run's full HDR distribution resampled (multinomial over its bins), as if the
  same process had produced other samples of the same size;
- time: the run's intervals resampled (from ``timeseries.jsonl``). Samples taken in the same
  few seconds share their conditions (a burst of connects, a pause, a noisy neighbour on the
  machine), so they are not independent: a figure that swings from one interval to the next
  swings from one run to the next too, which sampling alone does not show.

Every resampling uses a fixed seed, so the same two runs always get the same verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hdrh.histogram import HdrHistogram

#: resamples per estimate: enough for a stable 95 % interval, cheap on histograms of a few thousand bins
RESAMPLES = 400
SEED = 20_240_601
#: below this many intervals with samples, the variation over time cannot be estimated
MIN_INTERVALS = 3


@dataclass(frozen=True)
class Distribution:
    """A histogram's non-empty bins: each bin's value (the highest equivalent, as hdrh reports) and count."""

    values: np.ndarray  # microseconds, ascending
    counts: np.ndarray  # int64, same length

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def percentile(self, p: float) -> float:
        """The value at percentile ``p`` (above 0, up to 100), exactly as ``HdrHistogram.get_value_at_percentile``."""
        rank = _rank(p, self.total)
        index = int(np.searchsorted(np.cumsum(self.counts), rank, side="left"))
        return float(self.values[min(index, len(self.values) - 1)])

    def resampled_percentiles(self, percentiles: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
        """``RESAMPLES`` multinomial resamples of the bins: one row per resample, one column per percentile."""
        n = self.total
        draws = rng.multinomial(n, self.counts / n, size=RESAMPLES).cumsum(axis=1)
        columns = []
        for p in percentiles:
            index = (draws < _rank(p, n)).sum(axis=1)
            columns.append(self.values[np.minimum(index, len(self.values) - 1)])
        return np.column_stack(columns).astype(float)

    def curve(self, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
        """An HDR percentile curve: percentiles from 0 to the last one the samples resolve, and their values."""
        n = self.total
        # 1/(1-p) spaced evenly on a log axis, up to the point where one sample is the whole tail
        top = max(np.log10(n), 1.0)
        percentiles = 100 * (1 - 10 ** -np.linspace(0, top, points))
        cumulative = np.cumsum(self.counts)
        ranks = np.maximum((percentiles / 100 * n + 0.5).astype(np.int64), 1)
        index = np.minimum(np.searchsorted(cumulative, ranks, side="left"), len(self.values) - 1)
        return percentiles, self.values[index].astype(float)


def _rank(p: float, total: int) -> int:
    return max(int(min(p, 100.0) * total / 100 + 0.5), 1)


def distribution(histogram: HdrHistogram) -> Distribution:
    counts = np.ctypeslib.as_array(histogram.counts)[: histogram.counts_len].astype(np.int64)
    index = np.flatnonzero(counts)
    values = np.array(
        [histogram.get_highest_equivalent_value(histogram.get_value_from_index(int(i))) for i in index], dtype=np.int64
    )
    return Distribution(values=values, counts=counts[index])


def decode(text: str) -> Distribution:
    return distribution(HdrHistogram.decode(text.encode("ascii")))


def rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


#: each interval's distribution is rebuilt from the quantiles the time series keeps
_KNOTS = np.array([0.0, 0.50, 0.95, 0.99, 1.0])
#: intervals are pooled into at most this many consecutive blocks before resampling, so a soak
#: of thousands of intervals costs no more than a short run
_MAX_BLOCKS = 200
_GRID = 512


def over_intervals(
    quantiles: np.ndarray, counts: np.ndarray, percentiles: tuple[float, ...], generator: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """The run's percentiles rebuilt from its intervals, and resamples of them over intervals.

    ``quantiles`` has one row per interval with samples: p50, p95, p99 and the maximum (NaN when
    the series does not keep it); ``counts`` the samples behind each row. Each interval's
    distribution is taken as linear between its quantiles (from 0 below p50; above p99 up to the
    maximum, or as far again as p95 to p99), the run as their mixture weighted by count, and
    intervals are drawn with replacement. Returns the estimate from all intervals (one value per
    percentile) and ``RESAMPLES`` rows of resampled ones; None with fewer than ``MIN_INTERVALS``.
    """
    if len(counts) < MIN_INTERVALS:
        return None
    p50, p95, p99, top = (quantiles[:, i] for i in range(4))
    top = np.where(np.isnan(top), p99 + (p99 - p95), top)
    knots = np.maximum.accumulate(np.column_stack([np.zeros(len(p50)), p50, p95, p99, np.maximum(top, p99)]), axis=1)
    low = max(float(knots[:, 1].min()) / 2, 1e-6)
    grid = np.geomspace(low, float(knots[:, -1].max()) * 1.01 + 1e-9, _GRID)
    cdf = np.array([np.interp(grid, row, _KNOTS) for row in knots])  # interval x grid
    blocks = np.array_split(np.arange(len(counts)), min(len(counts), _MAX_BLOCKS))
    weights = np.array([counts[b].sum() for b in blocks], dtype=float)
    block_cdf = np.array([(counts[b, None] * cdf[b]).sum(axis=0) for b in blocks]) / weights[:, None]
    picks = generator.integers(0, len(blocks), size=(RESAMPLES, len(blocks)))
    drawn = np.zeros((RESAMPLES, len(blocks)))
    np.add.at(drawn, (np.arange(RESAMPLES)[:, None], picks), 1.0)
    drawn *= weights
    mixtures = np.vstack([weights[None, :], drawn]) @ block_cdf
    mixtures /= np.vstack([weights[None, :], drawn]).sum(axis=1)[:, None]
    values = np.column_stack([_crossing(mixtures, grid, p / 100) for p in percentiles])
    return values[0], values[1:]


def _crossing(cdfs: np.ndarray, grid: np.ndarray, level: float) -> np.ndarray:
    """Where each row of ``cdfs`` first reaches ``level``, interpolated on ``grid``."""
    above = cdfs >= level - 1e-12
    index = np.where(above.any(axis=1), above.argmax(axis=1), len(grid) - 1)
    before = np.maximum(index - 1, 0)
    c0, c1 = cdfs[np.arange(len(cdfs)), before], cdfs[np.arange(len(cdfs)), index]
    share = np.where(c1 > c0, (level - c0) / np.where(c1 > c0, c1 - c0, 1), 1.0)
    return grid[before] + np.clip(share, 0, 1) * (grid[index] - grid[before])


def ratio_over_intervals(
    numerators: np.ndarray, denominators: np.ndarray, generator: np.random.Generator
) -> tuple[float, np.ndarray] | None:
    """``sum(numerators) / sum(denominators)`` over all intervals, and resamples of it over
    intervals drawn with replacement; None with fewer than ``MIN_INTERVALS`` intervals."""
    if len(numerators) < MIN_INTERVALS or denominators.sum() <= 0:
        return None
    picks = generator.integers(0, len(numerators), size=(RESAMPLES, len(numerators)))
    den = denominators[picks].sum(axis=1)
    resamples = np.where(den > 0, numerators[picks].sum(axis=1) / np.where(den > 0, den, 1), 0.0)
    return float(numerators.sum() / denominators.sum()), resamples


def binomial(successes: int, trials: int, generator: np.random.Generator) -> np.ndarray:
    """Resamples of a proportion ``successes / trials``."""
    if trials <= 0:
        return np.zeros(RESAMPLES)
    return generator.binomial(trials, successes / trials, size=RESAMPLES) / trials


@dataclass(frozen=True)
class Interval:
    """A 95 % interval for a difference, and which noise set its width."""

    low: float
    high: float
    source: str  # "sampling", "time" or "sampling and time"

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def difference_interval(
    point: float,
    sampling: tuple[np.ndarray, np.ndarray] | None,
    over_time: tuple[tuple[float, np.ndarray], tuple[float, np.ndarray]] | None,
) -> Interval:
    """The 95 % interval of ``candidate - baseline`` around ``point``: the wider of the two noises.

    ``sampling`` holds the baseline's and the candidate's resamples of the figure from their full
    distributions. ``over_time`` holds, for each, the figure rebuilt from its intervals and the
    resamples over intervals; that rebuilt figure approximates the exact one, so only the spread of
    its resamples is used, placed around ``point``.
    """
    low, high, sources = point, point, []
    if sampling is not None:
        diff = sampling[1] - sampling[0]
        low, high = float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))
        sources.append("sampling")
    if over_time is not None:
        (base_estimate, base_resamples), (cand_estimate, cand_resamples) = over_time
        shift = point - (cand_estimate - base_estimate)
        diff = cand_resamples - base_resamples + shift
        t_low, t_high = float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))
        if not sources or t_low < low or t_high > high:
            sources.append("time")
        low, high = min(low, t_low), max(high, t_high)
    return Interval(low, high, " and ".join(sources) or "none")
