"""Texture stage: the named channels of DESIGN.md section 4 at grid resolution.

Everything is computed at the work resolution and reduced to the cell grid with fixed scales (a constant
divisor, clamp or tanh), never a per-frame min-max, so values compare across frames, videos and backends.
Filters are maxima of shifted slices and fixed 3x3 convolutions: cheap on a CPU and exportable to every
TensorRT version (no DFT, no cubic or antialiased resize).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .channels import CHANNELS, CLIP_CHANNELS

# Fixed scales: the value of each raw statistic that maps to tanh(1) ~ 0.76. Chosen on real clips
# (bikes, bigbuckbunny) so typical textured regions sit mid-range and strong structure saturates.
EDGE_SCALE = 0.05  # cell-mean Sobel magnitude (gradient in intensity per pixel)
HIGHPASS_SCALE = 0.1  # cell-mean |Laplacian|
FLAT_SCALE = 0.05  # cell luminance std
MOTION_DEADZONE = 0.015  # cell-mean |dI| below this is sensor / compression noise
MOTION_SCALE = 0.05
SALIENCY_SCALE = 0.3
STROKE_CONTRAST_FLOOR = 0.1  # DESIGN.md: max(local contrast, 0.1) keeps flat noise from looking like strokes
# Pixel ratio ramp: a contrast-0.05 stroke has ratio 0.5 (the 0.1 floor), flat noise of std 0.01 mostly below
# 0.35 (cell mean 0.05 measured; 0.22 with the ramp starting at 0.25). Noise from std ~0.015 on reaches
# stroke-like ratios: separating it from strokes of the same amplitude would need an elongation test.
STROKE_LOW, STROKE_HIGH = 0.35, 0.5
STROKE_DENSITY = 6.0  # a single 1-px stroke covers 1/8 of an 8-px cell: tanh(6 / 8) = 0.64
STRONG_EDGE = 0.5  # grid edge value that counts as a strong edge for edge_distance
EDGE_DISTANCE_STEPS = 16  # distances beyond 16 cells saturate
KMEANS_ITERS = 3  # from spread seeds on a 32x32 grid, assignments barely change after 3
KMEANS_POS_WEIGHT = 0.5
# Weight of the clip_* channels in the k-means features. A unit feature's projections on the 16 basis directions
# have a norm of at most 1, like the spread of cell colours in [0, 1]^3, so colour and CLIP count about equally.
KMEANS_CLIP_WEIGHT = 1.0
EPS = 1e-3


# Sobel x, Sobel y (over 8: intensity per pixel) and the Laplacian as one [3, 1, 3, 3] convolution
DERIVATIVE_KERNELS = (
    torch.tensor(
        [
            [[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]],
            [[[-1, -2, -1], [0, 0, 0], [1, 2, 1]]],
            [[[0, 8, 0], [8, -32, 8], [0, 8, 0]]],
        ],
        dtype=torch.float32,
    )
    / 8.0
)


def for_runtime() -> bool:
    """True while the graph is exported for runtimes (ONNX, then TensorRT).

    The maximum filter has two forms with the same values: maxima of shifted slices in eager PyTorch (its
    stride-1 ``max_pool2d`` is ~25x slower) and a MaxPool node for onnxruntime and TensorRT, whose kernel is fast
    and whose cost grows with the node count.
    """
    return torch.onnx.is_in_onnx_export()


def luminance(rgb: Tensor) -> Tensor:
    """Rec. 601 luma of an RGB image.

    Args:
        rgb: [B, 3, H, W] in [0, 1].

    Returns:
        [B, 1, H, W] in [0, 1].
    """
    return 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]


def max_filter(x: Tensor, size: int) -> Tensor:
    """Separable ``size`` x ``size`` maximum filter with edge replication, as maxima of shifted slices.

    A maximum of slices is ~25x faster than a stride-1 ``max_pool2d`` at 256x256 and exports to plain
    Slice/Max nodes (DESIGN.md section 12).

    Args:
        x: [B, C, H, W]. size: odd window side.

    Returns:
        [B, C, H, W].
    """
    r = size // 2
    if for_runtime():
        return F.max_pool2d(F.pad(x, (r, r, r, r), mode="replicate"), size, stride=1)
    h, w = x.shape[-2:]
    p = F.pad(x, (r, r, 0, 0), mode="replicate")
    out = p[..., :, 0:w]
    for i in range(1, size):
        out = torch.maximum(out, p[..., :, i : i + w])
    p = F.pad(out, (0, 0, r, r), mode="replicate")
    out = p[..., 0:h, :]
    for i in range(1, size):
        out = torch.maximum(out, p[..., i : i + h, :])
    return out


def derivatives(y: Tensor) -> Tensor:
    """Sobel x, Sobel y (normalised to intensity per pixel) and Laplacian, edge-replicated.

    One convolution with the three kernels stacked: 1.7x faster than sums of shifted slices in eager PyTorch
    (oneDNN, one thread), and one Conv node instead of a dozen Slice/Add nodes for the runtimes.

    Args:
        y: [B, 1, H, W].

    Returns:
        [B, 3, H, W]: gx, gy, Laplacian.
    """
    return F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), DERIVATIVE_KERNELS.to(y))


def _box3(x: Tensor) -> Tensor:
    """3x3 mean with edge replication at grid size. [B, C, gh, gw] -> [B, C, gh, gw]."""
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def to_grid(x: Tensor, block: int | tuple[int, int]) -> Tensor:
    """Means over non-overlapping blocks (cells). [B, C, H, W] -> [B, C, H / bh, W / bw]; H, W multiples of them.

    Two reshapes and means, rows then columns, instead of ``avg_pool2d``: contiguous reductions, measured 3.5x
    faster in eager PyTorch and 2.9x in onnxruntime (ReduceMean against AveragePool) at 11 x 256 x 256.
    """
    bh, bw = (block, block) if isinstance(block, int) else block
    bsz, c, h, w = x.shape
    rows = x.reshape(bsz, c, h // bh, bh, w).mean(dim=3)  # [B, C, H / bh, W]
    return rows.reshape(bsz, c, h // bh, w // bw, bw).mean(dim=4)


def cell_colour(rgb: Tensor, cell_px: int) -> Tensor:
    """Mean colour of each cell, the same bits in every runtime. [B, 3, H, W] -> [B, 3, H / cell_px, W / cell_px].

    Summed as 8-bit integers: integer sums are exact in float32 (below 2^24), so no runtime's summation order
    changes them. The k-means on these colours picks clusters with an argmin; a rounding difference of 1e-8 between
    PyTorch and onnxruntime once flipped a near-tie and moved a cell's relevance by 0.002.
    """
    bsz, c, h, w = rgb.shape
    k = cell_px
    levels = torch.round(rgb * 255.0)  # the frame's 8-bit values (the work-size frame is 8-bit)
    rows = levels.reshape(bsz, c, h // k, k, w).sum(dim=3)  # [B, 3, gh, W]
    return rows.reshape(bsz, c, h // k, w // k, k).sum(dim=4) / (255.0 * k * k)


def cell_std(x: Tensor, cell_px: int) -> Tensor:
    """Standard deviation of the pixels of each cell. [B, C, H, W] -> [B, C, H / cell_px, W / cell_px].

    Two passes (the cell mean first): E[x^2] - E[x]^2 cancels in flat cells, where the square root then magnifies
    rounding, so flatness moved by up to 0.013 between two runtimes that sum in another order.
    """
    bsz, c, h, w = x.shape
    k = cell_px
    mean = to_grid(x, k)[:, :, :, None, :, None]  # [B, C, gh, 1, gw, 1]
    centred = (x.reshape(bsz, c, h // k, k, w // k, k) - mean).reshape(bsz, c, h, w)
    return torch.sqrt(to_grid(centred * centred, k))


def stroke_response(y: Tensor) -> Tensor:
    """Polarity-aware thin-structure response per pixel.

    max(top-hat, black-hat) of luminance with a 5x5 element, over max(local contrast, 0.1), ramped so that
    flat noise scores 0 and 1-px strokes at contrast 0.05 score 1.

    Args:
        y: [B, 1, H, W] luminance in [0, 1].

    Returns:
        [B, 1, H, W] in [0, 1].
    """
    # two-channel passes halve the per-op overhead: [dilation, -erosion], then [opening, -closing]
    m = max_filter(torch.cat([y, -y], dim=1), 5)
    dil, ero = m[:, 0:1], -m[:, 1:2]
    oc = max_filter(torch.cat([ero, -dil], dim=1), 5)
    tophat = y - oc[:, 0:1]
    blackhat = -oc[:, 1:2] - y
    ratio = torch.maximum(tophat, blackhat) / torch.clamp(dil - ero, min=STROKE_CONTRAST_FLOOR)
    return torch.clamp((ratio - STROKE_LOW) / (STROKE_HIGH - STROKE_LOW), 0.0, 1.0)


def saliency_map(rgb: Tensor, cell_px: int) -> Tensor:
    """Bottom-up centre-surround saliency on the work-resolution pyramid, at grid resolution.

    Luminance and two colour-opponent maps (R-G, B-Y) at two pyramid levels (cell/2 and cell); each level's
    centre is compared with a 9x9 local mean (edges replicated) of the same level. No FFT, so it exports to TensorRT.

    Args:
        rgb: [B, 3, H, W] in [0, 1]. cell_px: pixels per cell.

    Returns:
        [B, 1, H / cell_px, W / cell_px] in [0, 1].
    """
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    feats = torch.cat([luminance(rgb), r - g, b - 0.5 * (r + g)], dim=1)  # [B, 3, H, W]
    total: Tensor | float = 0.0
    for pool in (cell_px // 2, cell_px):
        centre = to_grid(feats, pool)
        # separable 9x9 mean, edges replicated: 18 taps instead of 81
        surround = F.avg_pool2d(F.pad(centre, (4, 4, 0, 0), mode="replicate"), (1, 9), stride=1)
        surround = F.avg_pool2d(F.pad(surround, (0, 0, 4, 4), mode="replicate"), (9, 1), stride=1)
        cs = (centre - surround).abs().sum(dim=1, keepdim=True)
        total = total + to_grid(cs, cell_px // pool)
    return torch.tanh(cast(Tensor, total) / SALIENCY_SCALE)  # a tensor: the loop ran


def edge_distance(edge: Tensor) -> Tensor:
    """Chessboard distance (in cells) to the nearest strong-edge cell, over the grid diagonal.

    Grown by repeated 3x3 dilation for a fixed number of steps, so distances saturate at 16 cells instead of
    depending on the image.

    Args:
        edge: [B, 1, gh, gw] edge channel in [0, 1].

    Returns:
        [B, 1, gh, gw] in [0, 1].
    """
    gh, gw = edge.shape[-2:]
    reached = (edge > STRONG_EDGE).to(edge.dtype)
    dist = torch.zeros_like(edge)
    for _ in range(EDGE_DISTANCE_STEPS):
        dist = dist + (1.0 - reached)
        reached = F.max_pool2d(reached, 3, stride=1, padding=1)  # cheap at grid size
    return dist / math.hypot(gh, gw)


def kmeans_grid(features: Tensor, pos: Tensor, clusters: int) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed-iteration k-means of grid cells in feature + position space.

    Centroids start at the cells of a fixed spread of positions, so the result is deterministic and the graph
    static. Empty clusters keep their previous centroid.

    Args:
        features: [B, N, D] per-cell features (colour, and CLIP when present).
        pos: [N, 2] cell centres (x, y) in [0, 1].
        clusters: k.

    Returns:
        one_hot [B, N, k] float assignment, centroid_pos [B, k, 2] in [0, 1], counts [B, k].
    """
    bsz, n, _ = features.shape
    pts = torch.cat([features, KMEANS_POS_WEIGHT * pos.expand(bsz, n, 2)], dim=-1)  # [B, N, D + 2]
    seeds = torch.linspace(0, n - 1, clusters + 2, device=features.device)[1:-1].round().long()
    cent = pts[:, seeds]  # [B, k, D + 2]
    ids = torch.arange(clusters, device=features.device)
    for _ in range(KMEANS_ITERS):
        d = _sq_dist(pts, cent)  # [B, N, k]
        one_hot = (d.argmin(dim=-1, keepdim=True) == ids).to(pts.dtype)  # [B, N, k]
        counts = one_hot.sum(dim=1)  # [B, k]
        sums = one_hot.transpose(1, 2) @ pts  # [B, k, D + 2]
        cent = (sums + EPS * cent) / (counts[..., None] + EPS)
    one_hot = (_sq_dist(pts, cent).argmin(dim=-1, keepdim=True) == ids).to(pts.dtype)
    counts = one_hot.sum(dim=1)
    centroid_pos = (one_hot.transpose(1, 2) @ pos) / (counts[..., None] + EPS)
    return one_hot, centroid_pos, counts


def _sq_dist(a: Tensor, b: Tensor) -> Tensor:
    """Squared distances without the [B, N, k, D] intermediate. [B, N, D], [B, k, D] -> [B, N, k]."""
    return (a * a).sum(-1, keepdim=True) - 2.0 * a @ b.transpose(1, 2) + (b * b).sum(-1)[:, None, :]


def grid_positions(grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Cell centres and eccentricity.

    Returns:
        pos [N, 2] as (x, y) in [0, 1], row-major over the grid; eccentricity [N] in [0, 1].
    """
    gh, gw = grid
    ys = (torch.arange(gh, dtype=torch.float32) + 0.5) / gh
    xs = (torch.arange(gw, dtype=torch.float32) + 0.5) / gw
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    pos = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)
    ecc = torch.clamp(torch.linalg.vector_norm(pos - 0.5, dim=-1) / 0.7071, 0.0, 1.0)
    return pos, ecc


def texture(
    rgb: Tensor,
    luma: Tensor,
    motion: Tensor,
    caches: Tensor,
    pos: Tensor,
    ecc: Tensor,
    cell_px: int,
    clusters: int,
    head_channels: Tensor | None = None,
) -> Tensor:
    """Compute the texture array.

    Args:
        rgb: [B, 3, H, W] work-resolution frame in [0, 1].
        luma: [B, 1, H, W] its luminance.
        motion: [B, 1, gh, gw] motion channel in [0, 1] (from :func:`motion_channel`).
        caches: [B, 3, gh, gw] warped prev_relevance, prev_saliency, fixation in [0, 1].
        pos: [N, 2] cell centres. ecc: [N] eccentricity.
        cell_px: pixels per cell. clusters: k-means clusters.
        head_channels: [B, 16, gh, gw] channels clip_0..clip_15 in [-1, 1] from the query head (the clip head:
            dense CLIP features on its model's fixed basis); None leaves them zero and out of the clustering.

    Returns:
        [B, C, gh, gw] (C = :data:`~arr_coc_stream.channels.NUM_CHANNELS`), channels in registry order and
        inside their declared ranges.
    """
    bsz = rgb.shape[0]
    gh, gw = rgb.shape[-2] // cell_px, rgb.shape[-1] // cell_px
    out: dict[str, Tensor] = {}
    der = derivatives(luma)
    gx, gy = der[:, 0:1], der[:, 1:2]
    stroke_px = stroke_response(luma)
    # one pooling pass over every per-pixel statistic: ten separate avg_pool2d calls cost ~3x more on a CPU
    px = torch.cat(
        [torch.sqrt(gx * gx + gy * gy), stroke_px, der[:, 2:3].abs(), gx * gx, gy * gy, gx * gy], dim=1
    )  # [B, 6, H, W]
    cells = to_grid(px, cell_px)  # [B, 6, gh, gw]
    colour = cell_colour(rgb, cell_px)
    out["r"], out["g"], out["b"] = colour[:, 0:1], colour[:, 1:2], colour[:, 2:3]
    out["edge"] = torch.tanh(cells[:, 0:1] / EDGE_SCALE)
    stroke = torch.tanh(STROKE_DENSITY * cells[:, 1:2])
    out["stroke"] = stroke
    out["highpass"] = torch.tanh(cells[:, 2:3] / HIGHPASS_SCALE)
    out["flatness"] = 1.0 - torch.tanh(cell_std(luma, cell_px) / FLAT_SCALE)
    out["motion"] = motion
    out["saliency"] = saliency_map(rgb, cell_px)

    posg = pos.t().reshape(1, 2, gh, gw).expand(bsz, 2, gh, gw).to(rgb)
    out["pos_x"], out["pos_y"] = posg[:, 0:1], posg[:, 1:2]
    out["eccentricity"] = ecc.reshape(1, 1, gh, gw).expand(bsz, 1, gh, gw).to(rgb)
    out["prev_relevance"], out["prev_saliency"], out["fixation"] = caches[:, 0:1], caches[:, 1:2], caches[:, 2:3]
    zeros = torch.zeros_like(out["edge"])
    for i, name in enumerate(CLIP_CHANNELS):
        out[name] = zeros if head_channels is None else head_channels[:, i : i + 1]
    out.update(cluster_channels(out, pos.to(rgb), clusters, with_clip=head_channels is not None))
    out["edge_distance"] = edge_distance(out["edge"])

    # Text is many short strokes in several directions: structure-tensor coherence is low where gradient
    # orientations mix (letters) and high on parallel lines (stripes, folds, a single edge). Both are judged
    # over 3x3 cells, since a letter fragment in one 8-px cell looks like any other texture; measured on
    # scikit-image's page and text on four photographs this lifts the text/non-text AUC from 0.70 to 0.75.
    tensor = _box3(cells[:, 3:6])
    jxx, jyy, jxy = tensor[:, 0:1], tensor[:, 1:2], tensor[:, 2:3]
    coherence = torch.sqrt((jxx - jyy) ** 2 + 4.0 * jxy * jxy) / (jxx + jyy + EPS)
    out["text"] = _box3(stroke * (1.0 - torch.clamp(coherence, 0.0, 1.0)))

    return torch.cat([out[name] for name in CHANNELS], dim=1)


def cluster_channels(channels: dict[str, Tensor], pos: Tensor, clusters: int, with_clip: bool) -> dict[str, Tensor]:
    """The clustering: k-means of the cells on their colour (and clip_* channels) and position.

    Reads channels r, g, b and, with ``with_clip``, clip_0..clip_15 by name; positions come from the grid.

    Args:
        channels: name -> [B, 1, gh, gw] (at least the channels read). pos: [N, 2] cell centres (x, y).
        clusters: k. with_clip: the query head supplies the clip_* channels (else they are zeros: left out).

    Returns:
        cluster_id, cluster_dist, cluster_size: [B, 1, gh, gw] each, in [0, 1].
    """
    r = channels["r"]
    bsz, _, gh, gw = r.shape
    feats = torch.cat([channels["r"], channels["g"], channels["b"]], dim=1).flatten(2).transpose(1, 2)  # [B, N, 3]
    if with_clip:
        clip_channels = torch.cat([channels[name] for name in CLIP_CHANNELS], dim=1)  # [B, 16, gh, gw]
        feats = torch.cat([feats, KMEANS_CLIP_WEIGHT * clip_channels.flatten(2).transpose(1, 2)], dim=-1)
    one_hot, cpos, counts = kmeans_grid(feats, pos, clusters)
    ids = torch.arange(clusters, dtype=r.dtype, device=r.device)
    cell_cpos = one_hot @ cpos  # [B, N, 2]: each cell's cluster centroid
    scale = torch.tensor([gw, gh], dtype=r.dtype, device=r.device)
    dist = torch.linalg.vector_norm((pos - cell_cpos) * scale, dim=-1) / math.hypot(gh, gw)
    return {
        "cluster_id": (one_hot @ ids / (clusters - 1)).reshape(bsz, 1, gh, gw),
        "cluster_dist": torch.clamp(dist, 0.0, 1.0).reshape(bsz, 1, gh, gw),
        "cluster_size": (one_hot @ counts[..., None] / (gh * gw)).reshape(bsz, 1, gh, gw),
    }


def motion_channel(luma: Tensor, prev_luma: Tensor, fresh: Tensor, cell_px: int) -> Tensor:
    """Frame-difference motion, 0 on a fresh state.

    Args:
        luma, prev_luma: [B, 1, H, W] in [0, 1]. fresh: [B] bool, True where the state starts over.

    Returns:
        [B, 1, gh, gw] in [0, 1].
    """
    diff = to_grid((luma - prev_luma).abs(), cell_px)
    m = torch.tanh(torch.clamp(diff - MOTION_DEADZONE, min=0.0) / MOTION_SCALE)
    return m * (~fresh).to(m.dtype).view(-1, 1, 1, 1)


class Texture(nn.Module):
    """Module twin of :func:`texture` holding the grid constants as buffers."""

    # the buffers (registered in __init__), declared for the type checker
    pos: Tensor
    ecc: Tensor

    def __init__(self, grid: tuple[int, int], cell_px: int, clusters: int) -> None:
        super().__init__()
        pos, ecc = grid_positions(grid)
        self.register_buffer("pos", pos, persistent=False)
        self.register_buffer("ecc", ecc, persistent=False)
        self.cell_px, self.clusters = cell_px, clusters

    def forward(
        self, rgb: Tensor, luma: Tensor, motion: Tensor, caches: Tensor, head_channels: Tensor | None = None
    ) -> Tensor:
        return texture(rgb, luma, motion, caches, self.pos, self.ecc, self.cell_px, self.clusters, head_channels)
