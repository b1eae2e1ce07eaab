"""The attention-knockout page (`KnockoutResult`): the drop in P(answer) per window of layers."""

from __future__ import annotations

from lalm_lens.pages import page_for
from lalm_lens.pages.builder import Page


@page_for("KnockoutResult")
def knockout_page(result, audio):
    page = Page(f"answer {result.answer!r} · attention {result.describe_edges()} cut (window {result.window})")
    page.text(result.summary())
    page.audio(audio)
    page.data["knockout"] = dict(layers=result.layers, window=result.window, p_clean=result.p_clean,
                                 p_knocked=result.p_knocked.tolist(), drop=result.drop.tolist())
    page.figure("lalm-knockout", dict(data=[dict(type="scatter", mode="lines+markers", x=result.layers,
                                                 y=result.drop.tolist(), hoverinfo="none")],
                                      layout=dict(height=380, margin=dict(l=60, r=20, t=10, b=40),
                                                  xaxis=dict(title="first layer of the window", dtick=1),
                                                  yaxis=dict(title="relative drop in P(answer)"))))
    page.script(r"""
BUILDERS["lalm-knockout"] = (gd) => LL.tooltip(gd, (pt) => {
  const K = LL.DATA.knockout, i = pt.pointIndex;
  return [["layers", `${K.layers[i]}–${K.layers[i] + K.window - 1}`], ["P_clean", LL.num(K.p_clean)],
          ["P_knocked", LL.num(K.p_knocked[i])], ["drop", LL.num(K.drop[i])]];
});
""")
    return page
