"""Pages of edge attribution (`EdgeScores`): the sender x receiver node map and the top edges."""

from __future__ import annotations

from lalm_lens.pages.builder import Page


def edge_scores_page(result, audio):
    senders, receivers, m = result.node_matrix()
    page = Page(f"{result.method} edge scores · {result.metric} · {result.n_items} item(s)")
    page.text(result.summary(20))
    page.audio(audio)
    bound = float(m.abs().max()) or 1.0
    page.data["edges"] = dict(senders=senders, receivers=receivers, scores=m.tolist())
    page.figure("lalm-edges", dict(data=[dict(type="heatmap", z=m.tolist(), x=receivers, y=senders, zmin=-bound,
                                              zmax=bound, colorscale="RdBu", reversescale=True, hoverinfo="none")],
                                   layout=dict(height=max(360, 40 + 14 * len(senders)),
                                               margin=dict(l=90, r=20, t=10, b=90),
                                               xaxis=dict(title="receiver node"), yaxis=dict(title="sender node"))))
    page.heading("top edges")
    page.table(["sender", "receiver", "score"], [(s, r, f"{v:+.4g}") for s, r, v in result.top_edges(30)])
    page.script(r"""
BUILDERS["lalm-edges"] = (gd) => LL.tooltip(gd, (pt) => {
  const E = LL.DATA.edges, [i, j] = pt.pointNumber;
  return [["sender", E.senders[i]], ["receiver", E.receivers[j]], ["score (q, k, v summed)", LL.num(E.scores[i][j])]];
});
""")
    return page
