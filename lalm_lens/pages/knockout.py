"""The attention-knockout page (`KnockoutResult`): the drop in the metric per window of layers."""

from __future__ import annotations

from lalm_lens.pages.builder import Page


def knockout_page(result, audio):
    page = Page(f"answer {result.answer!r} · attention {result.describe_edges()} cut (window {result.window})")
    page.text(result.summary())
    page.audio(audio)
    page.data["knockout"] = dict(layers=result.layers, windows=[[w[0], w[-1]] for w in result.windows],
                                 clean=result.clean, knocked=result.knocked.tolist(), drop=result.drop.tolist())
    what = result.metric.get("describe", result.metric.get("name"))
    page.figure("lalm-knockout", dict(data=[dict(type="scatter", mode="lines+markers", x=result.layers,
                                                 y=result.drop.tolist(), hoverinfo="none")],
                                      layout=dict(height=380, margin=dict(l=60, r=20, t=10, b=40),
                                                  xaxis=dict(title="layer (the window's centre)", dtick=1),
                                                  yaxis=dict(title=f"relative drop in {what}"))))
    page.script(r"""
BUILDERS["lalm-knockout"] = (gd) => LL.tooltip(gd, (pt) => {
  const K = LL.DATA.knockout, i = pt.pointIndex, w = K.windows[i];
  return [["layers cut", w[0] === w[1] ? String(w[0]) : `${w[0]}–${w[1]}`], ["m_clean", LL.num(K.clean)],
          ["m_knocked", LL.num(K.knocked[i])], ["drop", LL.num(K.drop[i])]];
});
""")
    return page
