"""rnn_core: the from-scratch character RNN of D2L §8.5 — data, model, training, generation,
checkpoints. Data flows one way: text → vocab → batches → model → checkpoint → Hub → app."""
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .data import Vocab, load_corpus, normalize_prompt, normalize_text, SeqDataLoader
from .generation import TextStream, generate_text, predict_ch8
from .hub import HubError, load_model, push_checkpoint
from .model import RNNModelScratch
from .pretrained import CharRNN
from .training import fit, grad_clipping, sgd, train_ch8, train_epoch_ch8

__all__ = ["CharRNN", "Checkpoint", "CheckpointError", "HubError", "RNNModelScratch",
           "SeqDataLoader", "TextStream", "Vocab", "fit", "generate_text", "grad_clipping",
           "load_checkpoint",
           "load_corpus", "load_model", "normalize_prompt", "normalize_text", "predict_ch8",
           "push_checkpoint", "save_checkpoint", "sgd", "train_ch8", "train_epoch_ch8"]
