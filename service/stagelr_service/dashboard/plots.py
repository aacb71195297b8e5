"""A small SVG plotting kit for server-rendered charts: scales, ticks, marks.

Why our own: the charts are few and fixed (lines, dots, a band, error bars), and drawing
them on the server as SVG means no JavaScript library to ship, no client-side rendering
to test, and a page whose every data point is an element a browser test can count.

Every mark is an SVG element with a class and ``data-*`` attributes (and a ``<title>``
tooltip where it is a data point); colours and strokes come from the dashboard's CSS
file by class, so the markup carries no inline style (the Content-Security-Policy forbids
it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from markupsafe import Markup, escape

__all__ = ["Figure", "LinearScale", "LogScale", "Scale", "fmt_number", "nice_domain"]

DataAttrs = Mapping[str, object]


def fmt_number(value: float, digits: int = 3) -> str:
    """A short human form of a number: ``0.00123`` -> ``0.00123``, ``12500`` -> ``12,500``,
    ``3e-07`` -> ``3e-7``."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    magnitude = abs(value)
    if 1000 <= magnitude < 1e6:
        text = f"{value:,.0f}"  # steps: 1,200 rather than 1.2e+03
    elif 1e-4 <= magnitude < 1000:
        text = f"{value:.{digits}g}"
        if "e" in text:  # rounded up to 1000
            text = f"{value:,.0f}"
    else:
        text = f"{value:.{max(digits - 1, 1)}e}"
        mantissa, _, exponent = text.partition("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        text = f"{mantissa}e{int(exponent)}"
    return text


def _coord(value: float) -> str:
    return f"{value:.1f}"


class Scale(Protocol):
    """Maps data values to pixels along one axis, and proposes ticks."""

    @property
    def lo(self) -> float: ...

    @property
    def hi(self) -> float: ...

    def __call__(self, value: float) -> float: ...

    def ticks(self) -> list[tuple[float, str]]: ...


def _nice_step(span: float, count: int) -> float:
    raw = span / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    for mult in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= mult * power:
            return mult * power
    return 10 * power


def nice_domain(values: Iterable[float], pad: float = 0.05) -> tuple[float, float]:
    """The finite values' range, padded by ``pad`` of its span (a point gets a unit span)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi == lo:
        half = abs(lo) * 0.1 or 0.5
        return lo - half, hi + half
    span = hi - lo
    return lo - pad * span, hi + pad * span


@dataclass(frozen=True)
class LinearScale:
    """Data ``[lo, hi]`` onto pixels ``[px0, px1]`` (px1 < px0 for a y axis)."""

    lo: float
    hi: float
    px0: float
    px1: float
    tick_count: int = 5

    def __call__(self, value: float) -> float:
        span = self.hi - self.lo or 1.0
        t = (value - self.lo) / span
        return self.px0 + t * (self.px1 - self.px0)

    def ticks(self) -> list[tuple[float, str]]:
        if self.hi <= self.lo:
            return [(self.lo, fmt_number(self.lo))]
        step = _nice_step(self.hi - self.lo, self.tick_count)
        first = math.ceil(self.lo / step - 1e-9) * step
        out = []
        value = first
        while value <= self.hi + step * 1e-9:
            out.append((value, fmt_number(round(value / step) * step)))
            value += step
        return out


@dataclass(frozen=True)
class LogScale:
    """Data ``[lo, hi]`` (both > 0) onto pixels on a log10 axis."""

    lo: float
    hi: float
    px0: float
    px1: float

    def __post_init__(self) -> None:
        if not (self.lo > 0 and self.hi > 0):
            raise ValueError(f"a log scale needs a positive domain, not [{self.lo}, {self.hi}]")

    def __call__(self, value: float) -> float:
        value = max(value, self.lo * 1e-6)
        a, b = math.log10(self.lo), math.log10(self.hi)
        t = (math.log10(value) - a) / ((b - a) or 1.0)
        return self.px0 + t * (self.px1 - self.px0)

    def ticks(self) -> list[tuple[float, str]]:
        lo_exp = math.floor(math.log10(self.lo) + 1e-9)
        hi_exp = math.ceil(math.log10(self.hi) - 1e-9)
        decades = [10.0**e for e in range(lo_exp, hi_exp + 1)]
        inside = [d for d in decades if self.lo * (1 - 1e-9) <= d <= self.hi * (1 + 1e-9)]
        # Under two decades in view: the 2s and 5s too, so the axis is still readable.
        mults = (1.0,) if len(inside) >= 3 else (1.0, 2.0, 5.0)
        out = []
        for d in decades:
            for m in mults:
                v = d * m
                if self.lo * (1 - 1e-9) <= v <= self.hi * (1 + 1e-9):
                    out.append((v, fmt_number(v)))
        if len(out) > 7:  # too many decades for the axis: every other one
            out = out[::2]
        return out


def _attrs(data: DataAttrs | None) -> str:
    if not data:
        return ""
    parts = []
    for key, value in data.items():
        if value is None:
            continue
        text = fmt_number(value, 6) if isinstance(value, float) else str(value)
        parts.append(f' data-{key}="{escape(text)}"')
    return "".join(parts)


def _title(title: str | None) -> str:
    return f"<title>{escape(title)}</title>" if title else ""


@dataclass
class Figure:
    """One chart: a frame with axes, and marks added in data coordinates.

    ``x`` and ``y`` are built by the figure from the kind and domain asked for, so a
    caller never thinks in pixels. Marks outside the domain are clamped to its edge and
    get the class ``clipped``.
    """

    width: int
    height: int
    x_domain: tuple[float, float]
    y_domain: tuple[float, float]
    x_log: bool = False
    y_log: bool = False
    x_label: str = ""
    y_label: str = ""
    label: str = ""
    css_class: str = ""
    margin: tuple[int, int, int, int] = (12, 14, 38, 58)  # top, right, bottom, left
    axes: bool = True
    x: Scale = field(init=False)
    y: Scale = field(init=False)
    _marks: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        top, right, bottom, left = self.margin
        self.left, self.right = float(left), float(self.width - right)
        self.top, self.bottom = float(top), float(self.height - bottom)
        x0, x1 = self.x_domain
        y0, y1 = self.y_domain
        self.x = (
            LogScale(x0, x1, self.left, self.right)
            if self.x_log
            else LinearScale(x0, x1, self.left, self.right, tick_count=6)
        )
        self.y = (
            LogScale(y0, y1, self.bottom, self.top)
            if self.y_log
            else LinearScale(y0, y1, self.bottom, self.top, tick_count=4)
        )

    # ------------------------------------------------------------------ geometry

    def _inside(self, value: float, scale: Scale) -> tuple[float, bool]:
        lo, hi = min(scale.lo, scale.hi), max(scale.lo, scale.hi)
        if value < lo:
            return lo, True
        if value > hi:
            return hi, True
        return value, False

    def point(self, x: float, y: float) -> tuple[float, float, bool]:
        """Pixel position of a data point, clamped into the frame; and whether it was."""
        x, cx = self._inside(x, self.x)
        y, cy = self._inside(y, self.y)
        return self.x(x), self.y(y), cx or cy

    # ------------------------------------------------------------------ marks

    def polyline(
        self,
        points: Sequence[tuple[float, float]],
        css_class: str,
        data: DataAttrs | None = None,
    ) -> None:
        """A line through the finite points, in order (at least two to draw)."""
        coords = [self.point(x, y)[:2] for x, y in points if math.isfinite(x) and math.isfinite(y)]
        if len(coords) < 2:
            return
        text = " ".join(f"{_coord(px)},{_coord(py)}" for px, py in coords)
        self._marks.append(
            f'<polyline class="{escape(css_class)}" points="{text}"'
            f"{_attrs({'points': len(coords), **(data or {})})}/>"
        )

    def polygon(self, points: Sequence[tuple[float, float]], css_class: str) -> None:
        """A closed filled area (a confidence band)."""
        coords = [self.point(x, y)[:2] for x, y in points if math.isfinite(x) and math.isfinite(y)]
        if len(coords) < 3:
            return
        text = " ".join(f"{_coord(px)},{_coord(py)}" for px, py in coords)
        self._marks.append(f'<polygon class="{escape(css_class)}" points="{text}"/>')

    def circle(
        self,
        x: float,
        y: float,
        css_class: str,
        *,
        r: float = 3.0,
        title: str | None = None,
        data: DataAttrs | None = None,
    ) -> None:
        """One data point."""
        px, py, clipped = self.point(x, y)
        cls = f"{css_class} clipped" if clipped else css_class
        self._marks.append(
            f'<circle class="{escape(cls)}" cx="{_coord(px)}" cy="{_coord(py)}" r="{r:g}"'
            f"{_attrs(data)}>{_title(title)}</circle>"
        )

    def segment(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        css_class: str,
        *,
        title: str | None = None,
        data: DataAttrs | None = None,
    ) -> None:
        """A straight line between two data points (error bars, markers)."""
        ax, ay, _ = self.point(x0, y0)
        bx, by, _ = self.point(x1, y1)
        self._marks.append(
            f'<line class="{escape(css_class)}" x1="{_coord(ax)}" y1="{_coord(ay)}" '
            f'x2="{_coord(bx)}" y2="{_coord(by)}"{_attrs(data)}>{_title(title)}</line>'
        )

    def vline(
        self, x: float, css_class: str, *, title: str | None = None, data: DataAttrs | None = None
    ) -> None:
        """A vertical line across the whole frame at data ``x``."""
        px, _, _ = self.point(x, self.y.lo)
        self._marks.append(
            f'<line class="{escape(css_class)}" x1="{_coord(px)}" y1="{_coord(self.top)}" '
            f'x2="{_coord(px)}" y2="{_coord(self.bottom)}"{_attrs(data)}>{_title(title)}</line>'
        )

    def text(self, x: float, y: float, content: str, css_class: str = "note") -> None:
        """A text note at data coordinates."""
        px, py, _ = self.point(x, y)
        self._marks.append(
            f'<text class="{escape(css_class)}" x="{_coord(px)}" y="{_coord(py)}">'
            f"{escape(content)}</text>"
        )

    # ------------------------------------------------------------------ output

    def _axes(self) -> str:
        out = [
            f'<rect class="frame" x="{_coord(self.left)}" y="{_coord(self.top)}" '
            f'width="{_coord(self.right - self.left)}" height="{_coord(self.bottom - self.top)}"/>'
        ]
        for value, label in self.x.ticks():
            px = self.x(value)
            out.append(
                f'<line class="grid" x1="{_coord(px)}" y1="{_coord(self.top)}" '
                f'x2="{_coord(px)}" y2="{_coord(self.bottom)}"/>'
                f'<text class="tick x" x="{_coord(px)}" y="{_coord(self.bottom + 15)}">'
                f"{escape(label)}</text>"
            )
        for value, label in self.y.ticks():
            py = self.y(value)
            out.append(
                f'<line class="grid" x1="{_coord(self.left)}" y1="{_coord(py)}" '
                f'x2="{_coord(self.right)}" y2="{_coord(py)}"/>'
                f'<text class="tick y" x="{_coord(self.left - 6)}" y="{_coord(py + 4)}">'
                f"{escape(label)}</text>"
            )
        if self.x_label:
            out.append(
                f'<text class="axis-label x" x="{_coord((self.left + self.right) / 2)}" '
                f'y="{_coord(self.height - 4)}">{escape(self.x_label)}</text>'
            )
        if self.y_label:
            cy = (self.top + self.bottom) / 2
            out.append(
                f'<text class="axis-label y" x="14" y="{_coord(cy)}" '
                f'transform="rotate(-90 14 {_coord(cy)})">{escape(self.y_label)}</text>'
            )
        return "".join(out)

    def render(self) -> Markup:
        """The chart as one ``<svg>`` element (scales with its container's width)."""
        cls = f"plot {self.css_class}".strip()
        return Markup(
            f'<svg class="{escape(cls)}" viewBox="0 0 {self.width} {self.height}" '
            f'role="img" aria-label="{escape(self.label)}" xmlns="http://www.w3.org/2000/svg">'
            f"{self._axes() if self.axes else ''}"
            f'<g class="marks">{"".join(self._marks)}</g></svg>'
        )
