"""A faithful copy of the PyTorch chatbot tutorial's model and training step, for comparison.

https://pytorch.org/tutorials/beginner/chatbot_tutorial.html: time-major tensors, a bi-GRU
encoder over packed sequences whose two directions are summed, a Luong-attention GRU decoder
stepped one time step at a time in a Python loop with teacher forcing, a decoder that returns
softmax probabilities, ``maskNLLLoss`` (log of the gathered probability, over every time step up
to the longest target), two Adam optimisers and gradient clipping. Only the names are PEP 8.
Benchmarks only: nothing in the project imports this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xianliao.model.vocab import GO_ID, PAD_ID


class EncoderRNN(nn.Module):
    def __init__(self, hidden_size: int, embedding: nn.Embedding, n_layers: int = 1, dropout=0.0):
        super().__init__()
        self.n_layers = n_layers
        self.hidden_size = hidden_size
        self.embedding = embedding
        self.gru = nn.GRU(
            hidden_size,
            hidden_size,
            n_layers,
            dropout=(0 if n_layers == 1 else dropout),
            bidirectional=True,
        )

    def forward(self, input_seq, input_lengths, hidden=None):
        embedded = self.embedding(input_seq)  # (S, B, H)
        packed = nn.utils.rnn.pack_padded_sequence(embedded, input_lengths)
        outputs, hidden = self.gru(packed, hidden)
        outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs)
        outputs = outputs[:, :, : self.hidden_size] + outputs[:, :, self.hidden_size :]
        return outputs, hidden


class Attn(nn.Module):
    """Luong attention, the tutorial's default "dot" method."""

    def forward(self, hidden, encoder_outputs):
        attn_energies = torch.sum(hidden * encoder_outputs, dim=2)  # (S, B)
        attn_energies = attn_energies.t()
        return F.softmax(attn_energies, dim=1).unsqueeze(1)  # (B, 1, S)


class LuongAttnDecoderRNN(nn.Module):
    def __init__(self, embedding, hidden_size, output_size, n_layers=1, dropout=0.1):
        super().__init__()
        self.n_layers = n_layers
        self.embedding = embedding
        self.embedding_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(
            hidden_size, hidden_size, n_layers, dropout=(0 if n_layers == 1 else dropout)
        )
        self.concat = nn.Linear(hidden_size * 2, hidden_size)
        self.out = nn.Linear(hidden_size, output_size)
        self.attn = Attn()

    def forward(self, input_step, last_hidden, encoder_outputs):
        embedded = self.embedding_dropout(self.embedding(input_step))  # (1, B, H)
        rnn_output, hidden = self.gru(embedded, last_hidden)
        attn_weights = self.attn(rnn_output, encoder_outputs)
        context = attn_weights.bmm(encoder_outputs.transpose(0, 1))  # (B, 1, H)
        rnn_output = rnn_output.squeeze(0)
        context = context.squeeze(1)
        concat_output = torch.tanh(self.concat(torch.cat((rnn_output, context), 1)))
        output = F.softmax(self.out(concat_output), dim=1)
        return output, hidden


def mask_nll_loss(inp, target, mask):
    n_total = mask.sum()
    cross_entropy = -torch.log(torch.gather(inp, 1, target.view(-1, 1)).squeeze(1))
    loss = cross_entropy.masked_select(mask).mean()
    return loss, n_total.item()


class TutorialTrainer:
    """The tutorial's model sizes and ``train`` function (teacher forcing ratio 1.0)."""

    def __init__(self, vocab_size: int, hidden_size: int = 500, layers: int = 2, lr=1e-4) -> None:
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.encoder = EncoderRNN(hidden_size, self.embedding, layers, 0.1)
        self.decoder = LuongAttnDecoderRNN(self.embedding, hidden_size, vocab_size, layers, 0.1)
        self.encoder.train()
        self.decoder.train()
        self.enc_opt = torch.optim.Adam(self.encoder.parameters(), lr=lr)
        self.dec_opt = torch.optim.Adam(self.decoder.parameters(), lr=lr * 5.0)
        self.clip = 50.0

    def modules(self) -> list[nn.Module]:
        return [self.encoder, self.decoder]

    @staticmethod
    def to_time_major(batch) -> tuple:
        """A project Batch -> the tutorial's (input (S, B), lengths, target (T, B), mask, max_len),
        sorted by question length, longest first, as its ``batch2TrainData`` does."""
        order = torch.argsort(batch.src_len, descending=True, stable=True)
        inp = batch.src[order].t().contiguous()
        lengths = batch.src_len[order]
        target = batch.tgt_out[order].t().contiguous()
        mask = target != PAD_ID
        return inp, lengths, target, mask, target.shape[0]

    def step(self, batch) -> float:
        inp, lengths, target, mask, max_target_len = self.to_time_major(batch)
        self.enc_opt.zero_grad()
        self.dec_opt.zero_grad()
        loss = 0
        print_losses, n_totals = [], 0
        encoder_outputs, encoder_hidden = self.encoder(inp, lengths.to("cpu"))
        B = inp.shape[1]
        decoder_input = torch.LongTensor([[GO_ID for _ in range(B)]])
        decoder_hidden = encoder_hidden[: self.decoder.n_layers]
        for t in range(max_target_len):
            decoder_output, decoder_hidden = self.decoder(
                decoder_input, decoder_hidden, encoder_outputs
            )
            decoder_input = target[t].view(1, -1)
            mask_loss, n_total = mask_nll_loss(decoder_output, target[t], mask[t])
            loss += mask_loss
            print_losses.append(mask_loss.item() * n_total)
            n_totals += n_total
        loss.backward()
        nn.utils.clip_grad_norm_(self.encoder.parameters(), self.clip)
        nn.utils.clip_grad_norm_(self.decoder.parameters(), self.clip)
        self.enc_opt.step()
        self.dec_opt.step()
        return sum(print_losses) / n_totals
