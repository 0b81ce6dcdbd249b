"""A tiny loss / validation-score plot drawn with QPainter (no matplotlib)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = QColor(255, 140, 0)
SCORE_COLOR = QColor(80, 180, 255)


class LossPlot(QWidget):
    """Training loss (orange, log scale, left) and validation score (blue, 0..1, right) per step."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loss: list[tuple[int, float]] = []
        self.score: list[tuple[int, float]] = []
        self.starts: list[int] = []  # steps where the next network of an ensemble began
        self.total = 1
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Training loss (orange, log scale: faint per step, bold its running mean) "
                        "and validation score "
                        "(blue: mean of foreground IoU and instance F1 on the held-back whole objects, "
                        "0 to 1) per step; a grey line where the next network of an ensemble "
                        "starts (each is validated on its own held-back objects)")

    def clear(self, total: int = 1) -> None:
        self.loss, self.score, self.total = [], [], max(int(total), 1)
        self.starts = []
        self.update()

    def new_network(self, step: int) -> None:
        """The next network of an ensemble starts at ``step``: a line, and its own score curve."""
        self.starts.append(int(step))
        self.update()

    def add(self, step: int, loss: float, score: float | None, total: int | None = None,
            redraw: bool = True) -> None:
        """One step's loss (and validation score); ``redraw=False`` records it without drawing
        (the Fine-tune widget redraws a few times a second, not at every step)."""
        if total:  # with a time budget the number of steps is an estimate that settles
            self.total = max(int(total), step, 1)
        if math.isfinite(loss):
            self.loss.append((step, loss))
        if score is not None and math.isfinite(score):
            if not self.score or self.score[-1] != (step, score):
                self.score.append((step, score))
        if redraw:
            self.update()

    def loss_curves(self) -> tuple[list[float], list[float], float, float, int]:
        """(raw, smoothed, low, high, window): log10 of the per-step losses, of their running mean
        over the last ``window`` steps (a 25th of the run, 1 to 25: one step's patches are a noisy
        sample), and the plotted range. The range starts at the 10th percentile of the raw values
        (lower ones are drawn at the floor): steps whose patches held no object (a loss near 0)
        do not flatten the rest of the curve."""
        losses = [v for _, v in self.loss]
        k = max(1, min(25, len(losses) // 25))
        raw = [math.log10(max(v, 1e-8)) for v in losses]
        smooth, acc = [], 0.0
        for i, v in enumerate(losses):
            acc += v - (losses[i - k] if i >= k else 0.0)
            smooth.append(math.log10(max(acc / min(i + 1, k), 1e-8)))
        ordered = sorted(raw)
        lo = min(ordered[int(0.1 * (len(ordered) - 1))], min(smooth))
        hi = max(max(raw), max(smooth))
        return raw, smooth, lo, hi, k

    def paintEvent(self, event: object) -> None:  # noqa: N802 - Qt name
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        m = 6
        p.fillRect(self.rect(), QColor(30, 30, 30))
        p.setPen(QPen(QColor(90, 90, 90), 1))
        p.drawRect(m, m, w - 2 * m, h - 2 * m - 12)
        ph = h - 2 * m - 12

        def x_of(step: int) -> float:
            return m + (w - 2 * m) * step / self.total

        curves = self.loss_curves() if self.loss else None
        if curves is not None:
            raw, smooth, lo, hi, _k = curves
            span = max(hi - lo, 1e-6)

            def line(vals: list[float]) -> QPolygonF:
                return QPolygonF([QPointF(x_of(s), m + ph * (1 - (min(max(v, lo), hi) - lo) / span))
                                  for (s, _), v in zip(self.loss, vals, strict=True)])

            faint = QColor(LOSS_COLOR)
            faint.setAlpha(90)
            p.setPen(QPen(faint, 1.0))
            p.drawPolyline(line(raw))
            p.setPen(QPen(LOSS_COLOR, 1.8))
            p.drawPolyline(line(smooth))
        if self.starts:
            p.setPen(QPen(QColor(150, 150, 150), 1, Qt.PenStyle.DashLine))
            for s in self.starts:
                p.drawLine(QPointF(x_of(s), m), QPointF(x_of(s), m + ph))
        if self.score:
            p.setPen(QPen(SCORE_COLOR, 1.5))
            bounds = [-1, *self.starts, math.inf]
            for a, b in zip(bounds, bounds[1:]):  # noqa: B905 - one curve per network
                seg = [(s, v) for s, v in self.score if a <= s < b]
                if seg:
                    p.drawPolyline(QPolygonF([QPointF(x_of(s), m + ph * (1 - v)) for s, v in seg]))
            for s, v in self.score:
                p.drawEllipse(QPointF(x_of(s), m + ph * (1 - v)), 2, 2)
        p.setPen(QColor(200, 200, 200))
        last = ""
        if curves is not None:
            smooth, k = curves[1], curves[4]
            last = f"loss {10 ** smooth[-1]:.3g}" + (f" (mean of {k} steps)" if k > 1 else "")
        if self.score:
            last += f"   validation {self.score[-1][1]:.3f}"
        p.drawText(m, h - 4, last or "no training yet")
        if self.loss:
            p.drawText(QRectF(w - m - 100, h - 16, 100, 14), Qt.AlignmentFlag.AlignRight,
                       f"{self.total} steps")
        p.end()
