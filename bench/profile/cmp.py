import sys; sys.path.insert(0,'.')
from load_cg import load
a,na,b,nb=sys.argv[1],int(sys.argv[2]),sys.argv[3],int(sys.argv[4])
sa,ia,ta=load(a); sb,ib,tb=load(b)
print(f"A {ta/na:,.0f} instr/req   B {tb/nb:,.0f} instr/req  diff {ta/na-tb/nb:,.0f}")
d={f:sa[f]/na - sb.get(f,0)/nb for f in set(sa)|set(sb)}
for f,v in sorted(d.items(), key=lambda x:-abs(x[1]))[:45]:
    print(f"{v:>9,.0f} {sa.get(f,0)/na:>9,.0f} {sb.get(f,0)/nb:>9,.0f}  {f[:150]}")
