"""Engine 5: random valid molecules assembled from fragments with RDKit; target the canonical SMILES.

A molecule is a core (ring system or carbon chain) with 1-4 substituents, and sometimes a second ring joined
by a linker. RDKit sanitises every step, so only chemically valid molecules survive; a quarter get random
tetrahedral stereo (drawn as wedges, written as @/@@). The picture is drawn from the molecule parsed back from
the target SMILES, and the SMILES is a fixed point of RDKit canonicalisation, so target and image agree.
`smiles_tag=True` wraps the target as `<smiles>...</smiles>`, the Mathpix-markdown form.
"""
from __future__ import annotations

import io
import random

from PIL import Image

from data_engines.base import Sample
from data_engines.structured import format_conversation, paper, require

RINGS = ["c1ccccc1", "c1ccccc1", "c1ccncc1", "c1cncnc1", "c1ccsc1", "c1ccoc1", "c1cc[nH]c1", "c1c[nH]cn1",
         "c1ccc2ccccc2c1", "c1ccc2[nH]ccc2c1", "c1ccc2ncccc2c1", "c1cocn1", "c1cscn1", "c1ccc2[nH]cnc2c1",
         "C1CCCCC1", "C1CCCC1", "C1CC1", "C1CCNCC1", "C1CNCCN1", "C1COCCN1", "C1CCOC1", "O=C1CCCCC1",
         "C1=CCCCC1", "c1ccc2c(c1)OCO2", "O=c1cc[nH]c(=O)[nH]1"]
SUBSTITUENTS = ["C", "C", "CC", "CCC", "C(C)C", "C(C)(C)C", "O", "OC", "OCC", "N", "N(C)C", "F", "F", "Cl", "Cl",
                "Br", "I", "C(=O)O", "C(=O)OC", "C(=O)N", "C(=O)C", "C#N", "[N+](=O)[O-]", "C(F)(F)F",
                "S(=O)(=O)N", "S(=O)(=O)C", "C=O", "OC(=O)C", "NC(=O)C", "C=C", "C#C", "SC", "CO", "CCO", "CCN",
                "CC(=O)O", "NC(N)=O", "OCO", "B(O)O", "P(=O)(O)O"]
# (linker, index of the atom that bonds the second ring; atom 0 bonds the core)
LINKERS = [("", 0), ("", 0), ("C", 0), ("CC", 1), ("O", 0), ("N", 0), ("C(=O)", 0), ("C(=O)N", 2), ("NC(=O)", 1),
           ("S", 0), ("S(=O)(=O)", 0), ("OC", 1), ("C=C", 1), ("C#C", 1), ("CCN", 2), ("NCC", 2)]
MAX_HEAVY = 40


def _rdkit():
    Chem = require("rdkit.Chem", "rdkit", "the molecule engine")
    return Chem


def _frag(smiles: str):
    return _rdkit().MolFromSmiles(smiles)


def _open_sites(mol) -> list[int]:
    """Atoms that can take one more single bond (they carry a hydrogen)."""
    return [a.GetIdx() for a in mol.GetAtoms() if a.GetTotalNumHs() > 0]


def _attach(mol, site: int, frag, frag_site: int):
    """mol + frag with a single bond site-frag_site; None when RDKit rejects the result."""
    Chem = _rdkit()
    rw = Chem.RWMol(mol)
    off = rw.GetNumAtoms()
    rw.InsertMol(frag)
    for idx in (site, off + frag_site):
        atom = rw.GetAtomWithIdx(idx)
        if atom.GetNumExplicitHs():  # [nH] gives its hydrogen to the new bond
            atom.SetNumExplicitHs(atom.GetNumExplicitHs() - 1)
    rw.AddBond(site, off + frag_site, Chem.BondType.SINGLE)
    out = rw.GetMol()
    try:
        Chem.SanitizeMol(out)
    except Exception:
        return None
    return out


def _chain(rng: random.Random) -> str:
    n = rng.randint(2, 8)
    atoms = ["C"] * n
    if n > 2 and rng.random() < 0.4:
        atoms[rng.randrange(1, n)] = rng.choice(["O", "N", "S"]) if rng.random() < 0.5 else "C(=O)"
    if rng.random() < 0.3:
        i = rng.randrange(0, n - 1)
        if atoms[i] == "C" and atoms[i + 1] == "C":
            atoms[i] = "C="
    return "".join(atoms)


def random_molecule(rng: random.Random):
    """A sanitised RDKit Mol built from fragments (pure function of rng)."""
    Chem = _rdkit()
    mol = _frag(rng.choice(RINGS) if rng.random() < 0.85 else _chain(rng))
    for _ in range(rng.randint(1, 4)):
        sites = _open_sites(mol)
        if not sites:
            break
        site = rng.choice(sites)
        if rng.random() < 0.3:  # linker + second ring
            (link, end), ring = rng.choice(LINKERS), _frag(rng.choice(RINGS))
            ring_site = rng.choice(_open_sites(ring))
            if link:
                frag, frag_site = _attach(_frag(link), end, ring, ring_site), 0
            else:
                frag, frag_site = ring, ring_site
        else:
            frag, frag_site = _frag(rng.choice(SUBSTITUENTS)), 0
        if frag is None or frag.GetAtomWithIdx(frag_site).GetTotalNumHs() == 0:
            continue
        new = _attach(mol, site, frag, frag_site)
        if new is not None and new.GetNumHeavyAtoms() <= MAX_HEAVY:
            mol = new
    if rng.random() < 0.25:  # random tetrahedral stereo on the stereocentres
        centers = Chem.FindMolChiralCenters(mol, includeUnassigned=True, useLegacyImplementation=False)
        for idx, _ in centers:
            mol.GetAtomWithIdx(idx).SetChiralTag(rng.choice([Chem.ChiralType.CHI_TETRAHEDRAL_CW,
                                                            Chem.ChiralType.CHI_TETRAHEDRAL_CCW]))
        Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    return mol


def canonical_smiles(rng: random.Random) -> str:
    """A canonical SMILES that RDKit parses and re-canonicalises to itself."""
    Chem = _rdkit()
    for _ in range(20):
        smi = Chem.MolToSmiles(random_molecule(rng))
        back = Chem.MolFromSmiles(smi)
        if back is not None and Chem.MolToSmiles(back) == smi:
            return smi
    return "c1ccccc1"


class MoleculeEngine:
    """SMILES -> RDKit 2D depiction with random size, rotation, line width, font and colour scheme."""

    name = "molecule"

    def __init__(self, smiles_tag: bool = False, max_side: int = 1024):
        _rdkit()
        self.smiles_tag, self.max_side = smiles_tag, max_side

    def render(self, rng: random.Random) -> Sample:
        Chem = _rdkit()
        from rdkit.Chem import rdDepictor
        from rdkit.Chem.Draw import rdMolDraw2D

        smi = canonical_smiles(rng)
        mol = Chem.MolFromSmiles(smi)
        rdDepictor.SetPreferCoordGen(rng.random() < 0.5)
        rdDepictor.Compute2DCoords(mol)
        side = min(self.max_side, int(rng.uniform(220, 320) + 14 * mol.GetNumHeavyAtoms() * rng.uniform(0.8, 1.3)))
        w, h = side, int(side * rng.uniform(0.7, 1.0)) if rng.random() < 0.5 else side
        d = rdMolDraw2D.MolDraw2DCairo(w, h)
        o = d.drawOptions()
        o.rotate = rng.uniform(0, 360)
        o.bondLineWidth = rng.uniform(1.0, 3.0)
        o.padding = rng.uniform(0.03, 0.12)
        o.minFontSize = rng.randint(10, 16)
        o.baseFontSize = rng.uniform(0.5, 0.9)
        o.multipleBondOffset = rng.uniform(0.12, 0.2)
        o.setBackgroundColour(tuple(c / 255 for c in paper(rng)) + (1.0,))
        if rng.random() < 0.5:
            o.useBWAtomPalette()
        o.addStereoAnnotation = False
        rdMolDraw2D.PrepareAndDrawMolecule(d, mol)
        d.FinishDrawing()
        img = Image.open(io.BytesIO(d.GetDrawingText())).convert("RGB")
        target = f"<smiles>{smi}</smiles>" if self.smiles_tag else smi
        return Sample([img], format_conversation(target),
                      {"smiles": smi, "heavy_atoms": mol.GetNumHeavyAtoms()})
