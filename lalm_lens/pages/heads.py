"""The heads page (`HeadTrace`): RR of restoring each head's output, and each head's attention to the audio;
the experts page (`ExpertTrace`): RR of restoring each expert of each MoE layer."""

from __future__ import annotations

from lalm_lens.pages.common import trace_page


def heads_page(result, audio):
    page = trace_page(result, audio, f"restoring one head's z at {result.settings.get('head_positions')} position(s)")
    heads = list(range(result.patched.shape[1]))
    page.data["trace"] = dict(layers=result.layers, recovery=result.recovery.tolist(), patched=result.patched.tolist(),
                              attention_clean=result.attention_clean, attention_corrupted=result.attention_corrupted)
    height = max(260, 40 + 22 * len(result.layers))
    for fig_id, z, title in (("lalm-heads", result.recovery.tolist(), "RR"),
                             ("lalm-attention", result.attention_clean, "attention from the final position to the "
                                                                        "audio (clean)")):
        page.heading(title)
        page.figure(fig_id, dict(data=[dict(type="heatmap", z=z, x=heads, y=result.layers, colorscale="Viridis",
                                            hoverinfo="none")],
                                 layout=dict(height=height, xaxis=dict(title="head", dtick=1), yaxis=dict(title="layer"),
                                             margin=dict(l=60, r=20, t=10, b=40))))
    page.script(HEADS_JS)
    return page


def experts_page(result, audio):
    where = "one position at a time (best position shown)" if result.expert_mode == "tokens" else "the positions together"
    page = trace_page(result, audio, f"restoring one expert's {result.states} at {where}")
    rec = result.by_expert().masked_fill(result.by_expert().isinf(), float("nan"))
    page.data["trace"] = dict(layers=result.layers, experts=result.experts, recovery=rec.tolist())
    page.heading("RR")
    page.figure("lalm-experts", dict(data=[dict(type="heatmap", z=rec.tolist(), x=[str(e) for e in result.experts],
                                                y=result.layers, colorscale="Viridis")],
                                     layout=dict(height=max(260, 40 + 22 * len(result.layers)),
                                                 xaxis=dict(title="expert", type="category"),
                                                 yaxis=dict(title="MoE layer"), margin=dict(l=60, r=20, t=10, b=40))))
    return page


HEADS_JS = r"""
const headTip = (pt) => {
  const T = LL.DATA.trace, [a, h] = pt.pointNumber;
  return [["layer", String(T.layers[a])], ["head", String(h)], ["RR", LL.num(T.recovery[a][h])],
          ["P_patched", LL.num(T.patched[a][h])], ["attention to audio (clean)", LL.num(T.attention_clean[a][h])],
          ["attention to audio (corrupted)", LL.num(T.attention_corrupted[a][h])]];
};
BUILDERS["lalm-heads"] = (gd) => LL.tooltip(gd, headTip);
BUILDERS["lalm-attention"] = (gd) => LL.tooltip(gd, headTip);
"""
