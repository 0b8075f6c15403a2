"""`capgen export`: a checkpoint as ONNX graphs for onnxruntime (model/export/)."""

import click

from model.export.runtime import DEFAULT_OPSET
from tools.cli.caption import CHECKPOINT


@click.command("export")
@CHECKPOINT
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model folder to write (replaced whole).")
@click.option("--opset", type=click.IntRange(min=9), default=DEFAULT_OPSET, show_default=True, help="ONNX opset.")
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: the check report as one JSON object.")
def export(ckpt, out, opset, as_json):
    """Write the encoder and the decoder's step as ONNX, with vocabulary, config and a check against torch."""
    import json

    from model.export.export import export as export_model

    r = export_model(ckpt, out, opset)
    graphs = ", ".join(f"{graph} {diff:.2g}" for graph, diff in r["max_abs_diff_by_graph"].items())
    click.echo(f"{out}: encoder.onnx, decoder_init.onnx, decoder_step.onnx (opset {opset}), onnx.checker passed")
    click.echo(f"onnxruntime vs torch on sample inputs: max abs difference {r['max_abs_diff']:.3g} ({graphs})")
    if as_json:
        click.echo(json.dumps(r))
