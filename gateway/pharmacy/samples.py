"""A community-pharmacy dispense (RDS^O13) for demos and the README walkthrough (fictitious data).

    python -m gateway.pharmacy.samples --er-sample 1 --din 99100001 --drug "Oxycodone 5 mg" > /tmp/rds.hl7

``--er-sample I`` takes the NAM of ``gateway.samples.er_message(I)``'s patient (the ER feed of the
main README), ``--nam`` gives one directly. The DINs of the shipped table are synthetic (991xxxxx).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from gateway.hl7v2.tokenizer import parse
from gateway.samples import er_message


def nam_of_er_sample(i: int) -> str:
    """The NAM (PID-3 repetition typed JHN) of the i-th synthetic ER registration."""
    pid = parse(er_message(i)).first("PID")
    assert pid is not None
    return next(rep.get(1) for rep in pid.reps(3) if rep.get(5) == "JHN")


def dispense_message(nam: str, din: str, drug: str, *, when: datetime, pharmacy: str = "PHARM-STE-AGATHE",
                     rx: str = "RX100234", days: int = 30, quantity: int = 30, control_id: str = "") -> bytes:
    """One RDS^O13: PID (NAM only), ORC (CMQ prescriber), TQ1 (days' supply), RXD (DIN, OPQ pharmacist)."""
    at = f"{when:%Y%m%d%H%M%S}"
    segments = [
        f"MSH|^~\\&|RXPHARM|{pharmacy}|PIVOT|CISSS-LAURENTIDES|{at}||RDS^O13^RDS_O13|{control_id or 'RX' + at}|P|2.5.1"
        "||||||UNICODE UTF-8|FR",
        f"PID|1||{nam}^^^RAMQ^JHN",
        f"ORC|RE||{rx}||||||{at}|||1234567^Bélanger^Marie^^^Dre^^^CMQ",
        f"TQ1|1||QD|||{days}^d",
        f"RXD|1|{din}^{drug}^DIN|{at}|{quantity}|CO^comprimé||{rx}|||O-12345^Côté^Geneviève^^^^^^OPQ",
        "RXR|PO^Orale^HL70162",
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a fictitious pharmacy dispense (RDS^O13) on stdout")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--nam")
    who.add_argument("--er-sample", type=int, help="the patient of gateway.samples.er_message(I)")
    parser.add_argument("--din", default="99100001")
    parser.add_argument("--drug", default="Oxycodone 5 mg comprimé")
    parser.add_argument("--pharmacy", default="PHARM-STE-AGATHE")
    parser.add_argument("--rx", default="RX100234")
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args(argv)
    nam = args.nam or nam_of_er_sample(args.er_sample)
    sys.stdout.buffer.write(dispense_message(nam, args.din, args.drug, when=datetime.now(), pharmacy=args.pharmacy,
                                             rx=args.rx, days=args.days))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
