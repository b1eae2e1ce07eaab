"""How the audio reaches the answer: edge attribution, exact edge/path patching and circuits.

    scores = edge_attribution(model, inp, Silence(), answer="B", method="eap-ig-inputs")
    circuit = Circuit.top_n(scores, 50)
    evaluate_circuit(model, circuit, inp, Silence(), answer="B")   # faithfulness
"""

from lalm_lens.circuits.attribution import edge_attribution, exact_edge_patching, path_patching
from lalm_lens.circuits.circuit import Circuit, Faithfulness, evaluate_circuit, faithfulness_curve
from lalm_lens.circuits.graph import Graph, Receiver
from lalm_lens.circuits.result import EdgeScores

__all__ = ["Circuit", "EdgeScores", "Faithfulness", "Graph", "Receiver", "edge_attribution", "evaluate_circuit",
           "exact_edge_patching", "faithfulness_curve", "path_patching"]
