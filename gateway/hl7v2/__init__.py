"""HL7v2 ER7: our lean tokenizer (hot path), charsets, timestamps and ACKs."""

from gateway.hl7v2.tokenizer import Delimiters, Message, Rep, Segment, parse, parse_text

__all__ = ["Delimiters", "Message", "Rep", "Segment", "parse", "parse_text"]
