"""The one error the demo's model code raises for input a person gave; the app shows its message."""


class InputError(ValueError):
    """An input (a prompt, a setting, an uploaded file) the demo cannot use; the message says what to do.

    The model code of the demo raises it without knowing about Gradio; `space.app.user_facing` shows it
    on the page as a `gr.Error`.
    """
