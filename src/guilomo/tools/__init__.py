"""The command-line tools for a trained adapter, one thin module each.

    python -m guilomo.generate     prompts through the adapter (guilomo.tools.generate)
    python -m guilomo.export_peft  one-expert modules as a peft LoRA (guilomo.tools.export_peft)
    python -m guilomo.merge        a full model, one-expert modules merged (guilomo.tools.merge)
    python -m guilomo.push         upload a checked folder to the Hub (guilomo.tools.push)

Each reads ``key=value`` arguments (:mod:`guilomo.utils.cli`), checks every one of
them and its ``out=`` (:func:`guilomo.utils.io.check_output`) before loading a model,
and calls the library: :mod:`guilomo.data.prompts`, :mod:`guilomo.eval.collapse`,
:mod:`guilomo.moe.merge`, :mod:`guilomo.moe.peft_export`, :mod:`guilomo.hub`.
``python -m guilomo.<tool>`` runs ``guilomo/<tool>.py``, which forwards here.
"""
