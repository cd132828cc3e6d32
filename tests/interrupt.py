"""A Keras callback that interrupts training mid-epoch, as a pre-emption would: the kill-and-resume tests share it."""

import keras


class Interrupt(keras.callbacks.Callback):
    """Raises KeyboardInterrupt after batch 1 of epoch `epoch`."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.current = epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 1:
            raise KeyboardInterrupt


def fit_interrupted(model, dataset, callbacks, interrupt, epochs=4, steps_per_epoch=3):
    """`model.fit` for `epochs` x `steps_per_epoch` steps, interrupted mid-epoch `interrupt` (None: never),
    as a killed run would stop; the kill-and-resume tests then fit again to resume."""
    extra = [Interrupt(interrupt)] if interrupt is not None else []
    try:
        model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks + extra, verbose=0)
    except KeyboardInterrupt:
        pass
